"""The paper preset: pinned Hub revisions reach the code that downloads them, the paper's data
folder is selected, and `--dry-run` says where each setting comes from. No download: the Hub
functions are replaced by recorders."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from harness.config import RunConfig, load_preset, resolve_config
from harness.errors import BadInput
from harness.provenance import LABELS, flatten, load_provenance, provenance_rows

ROOT = Path(__file__).resolve().parents[1]
COMMIT = re.compile(r"^[0-9a-f]{40}$")


def test_every_setting_of_the_paper_preset_has_exactly_one_provenance_row():
    preset = set(flatten(load_preset("paper")))
    declared = load_provenance("paper")
    assert set(declared) == preset, (f"unlabelled: {sorted(preset - set(declared))}; "
                                     f"labelled but not set: {sorted(set(declared) - preset)}")
    assert all(row["source"] in LABELS and row.get("note") for row in declared.values())


def test_the_paper_preset_pins_what_could_be_established_and_selects_alpaca_7b_responses():
    cfg = resolve_config(method="d2o-guided", preset="paper")
    assert COMMIT.match(cfg.model.policy_revision) and COMMIT.match(cfg.model.reward_model_revision)
    assert COMMIT.match(cfg.data.revision)
    # No commit of the cost model could be established: it stays unpinned, and the preset says so.
    assert cfg.model.cost_model_revision is None
    text = (ROOT / "harness" / "presets" / "paper.yaml").read_text()
    assert "The cost model: NO commit could be established" in text
    assert cfg.data.data_dir == "data/Alpaca-7B"
    # The variant the docs recommend: anchors kept only when the Beaver cost model scores them safe.
    assert cfg.method.anchor_filter == "cost-model" and cfg.method.k == 11
    assert cfg.method.alpha == cfg.method.beta == 0.1


def _dry_run_text(cfg, tmp_path: Path) -> str:
    """What --dry-run prints for `cfg` (the plan resolved, nothing built or fetched)."""
    from harness.plan import describe_plan, resolve_plan

    return describe_plan(resolve_plan(cfg, check=False), tmp_path / "out", tmp_path / "home")


def test_dry_run_prints_each_setting_with_its_source_and_marks_a_changed_one_yours(tmp_path):
    cfg = resolve_config(method="d2o-guided", preset="paper", overrides={"train": {"learning_rate": "1e-6"}})
    plan = _dry_run_text(cfg, tmp_path)
    rows = {key: (value, source) for key, value, source, _ in provenance_rows(cfg)}
    assert rows["train.learning_rate"] == ("1e-06", "yours")
    assert rows["eval.lm_eval_tasks"][1] == "paper" and rows["methods.d2o.k"] == ("11", "secondary")
    assert rows["model.policy_revision"] == (cfg.model.policy_revision, "guess")
    for key, (value, source) in rows.items():
        line = next(line for line in plan.splitlines() if line.strip().startswith(key + " "))
        assert source in line and value in line
    assert f"PKU-Alignment/PKU-SafeRLHF@{cfg.data.revision}, folder data/Alpaca-7B" in plan


def test_the_plan_names_the_recommended_anchors_to_a_run_of_another_d2o_variant(tmp_path):
    def plan_of(method):
        return _dry_run_text(resolve_config(method=method, preset="paper"), tmp_path)

    assert "the docs recommend --method d2o-guided" in plan_of("d2o")
    assert "the docs recommend" not in plan_of("d2o-guided")
    assert "the docs recommend" not in plan_of("dpo")


def test_a_preset_without_a_provenance_file_prints_no_table(tmp_path):
    assert provenance_rows(resolve_config(preset="tiny")) is None
    assert "provenance:" not in _dry_run_text(resolve_config(preset="tiny"), tmp_path)


def test_unset_revisions_leave_every_config_hash_as_it_was():
    # Entries written before the fields existed hash without them.
    cfg = RunConfig()
    blob = cfg.to_dict()
    for section, name in (("model", "policy_revision"), ("model", "reward_model_revision"),
                          ("model", "cost_model_revision"), ("data", "revision"), ("data", "data_dir")):
        assert name in blob[section]
    from harness.config import without_added_defaults

    stripped = without_added_defaults(blob)
    assert "policy_revision" not in stripped["model"] and "data_dir" not in stripped["data"]
    pinned = resolve_config(preset="paper")
    unpinned = resolve_config(preset="paper", overrides={"model": {"policy_revision": "main"}})
    assert pinned.hash() != unpinned.hash()


class HubRecorder:
    """Stands in for huggingface_hub.snapshot_download: records the call, returns a local folder."""

    def __init__(self, root: Path):
        self.root, self.calls = root, []

    def __call__(self, repo_id, *, repo_type=None, revision=None, allow_patterns=None, **_):
        self.calls.append({"repo_id": repo_id, "repo_type": repo_type, "revision": revision,
                           "allow_patterns": allow_patterns})
        folder = self.root / (repo_type or "model") / repo_id.replace("/", "--") / (revision or "main")
        if repo_type == "dataset":
            (folder / "data" / "Alpaca-7B").mkdir(parents=True, exist_ok=True)
            (folder / "data" / "Alpaca-7B" / "train.jsonl").write_text("{}\n")
        else:
            folder.mkdir(parents=True, exist_ok=True)
        return str(folder)


def test_pinned_revisions_and_the_data_folder_reach_the_hub_download(tmp_path, monkeypatch):
    import huggingface_hub

    from harness.plan import resolve_plan

    recorder = HubRecorder(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", recorder)
    cfg = resolve_config(method="d2o-guided", preset="paper")
    assets = resolve_plan(cfg, check=False).assets(tmp_path / "home")
    by_repo = {call["repo_id"]: call for call in recorder.calls}
    assert by_repo["PKU-Alignment/alpaca-7b-reproduced"]["revision"] == cfg.model.policy_revision
    assert by_repo["PKU-Alignment/beaver-7b-v1.0-reward"]["revision"] == cfg.model.reward_model_revision
    data_call = by_repo["PKU-Alignment/PKU-SafeRLHF"]
    assert data_call == {"repo_id": "PKU-Alignment/PKU-SafeRLHF", "repo_type": "dataset",
                         "revision": cfg.data.revision, "allow_patterns": ["data/Alpaca-7B/*"]}
    # Unpinned: the cost model is not fetched here; from_pretrained loads its default branch.
    assert "PKU-Alignment/beaver-7b-v1.0-cost" not in by_repo and assets.cost == cfg.model.cost_model
    # Every later loader reads the pinned snapshot: the policy, both references, the reward model,
    # and the training and evaluation rows (the Alpaca-7B folder of the pinned commit).
    policy_dir = str(tmp_path / "hub" / "model" / "PKU-Alignment--alpaca-7b-reproduced" / cfg.model.policy_revision)
    assert assets.policy == policy_dir and set(assets.references.values()) == {policy_dir}
    assert assets.reward.endswith(cfg.model.reward_model_revision)
    folder = Path(assets.train_data.spec)
    assert folder.parts[-2:] == ("data", "Alpaca-7B") and cfg.data.revision in folder.parts
    assert assets.eval_data.spec == assets.train_data.spec


def test_the_pinned_folder_is_what_the_row_loader_reads(tmp_path, monkeypatch):
    import huggingface_hub

    from harness.data.pairs import load_rows
    from harness.hub_pins import dataset_folder

    row = {"prompt": "p", "response_0": "a", "response_1": "b", "is_response_0_safe": True,
           "is_response_1_safe": False, "better_response_id": 0, "safer_response_id": 0}

    def snapshot(repo_id, *, repo_type=None, revision=None, allow_patterns=None, **_):
        folder = tmp_path / revision / "data" / "Alpaca-7B"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train.jsonl").write_text(json.dumps(row) + "\n")
        return str(tmp_path / revision)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    cfg = resolve_config(preset="paper")
    rows = load_rows(str(dataset_folder(cfg.data)), "train", cache_dir=tmp_path / "arrow")
    assert rows == [row]


def test_a_data_folder_the_pinned_commit_lacks_is_one_line(tmp_path, monkeypatch):
    import huggingface_hub

    from harness.hub_pins import dataset_folder

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(tmp_path))
    cfg = resolve_config(preset="paper", overrides={"data": {"data_dir": "data/Alpaca-13B"}})
    with pytest.raises(BadInput, match=r"^data.data_dir data/Alpaca-13B: no such folder in PKU-Alignment/PKU-SafeRLHF"):
        dataset_folder(cfg.data)


def test_a_download_failure_is_one_line(monkeypatch):
    import huggingface_hub

    from harness.hub_pins import snapshot

    def fail(repo_id, **kw):
        raise OSError("connection refused\nmore detail")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    with pytest.raises(BadInput) as info:
        snapshot("owner/repo", revision="abc", repo_type="model")
    assert "\n" not in str(info.value) and "owner/repo at revision abc" in str(info.value)


def test_preflight_asks_the_hub_for_the_pinned_revision_and_refuses_one_it_lacks(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import RevisionNotFoundError

    from harness import preflight

    asked = []

    class Api:
        def model_info(self, repo_id, revision=None, timeout=None):
            asked.append(("model", repo_id, revision))
            if revision == "gone":
                # Built without an HTTP response (its constructor wants one): only its type matters.
                error = RevisionNotFoundError.__new__(RevisionNotFoundError)
                Exception.__init__(error, "no such revision")
                raise error

        def dataset_info(self, repo_id, revision=None, timeout=None):
            asked.append(("dataset", repo_id, revision))
            return SimpleNamespace(siblings=[SimpleNamespace(rfilename=name) for name in (
                "README.md", "data/Alpaca-7B/train.jsonl", "data/Alpaca-7B/test.jsonl")])

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cfg = resolve_config(preset="paper")
    preflight._check_model("model.policy", cfg.model.policy, None, revision=cfg.model.policy_revision)
    preflight._check_dataset(cfg.data.dataset, revision=cfg.data.revision, data_dir=cfg.data.data_dir)
    assert ("model", cfg.model.policy, cfg.model.policy_revision) in asked
    assert ("dataset", cfg.data.dataset, cfg.data.revision) in asked
    with pytest.raises(BadInput, match="has no revision gone$"):
        preflight._check_model("model.policy", cfg.model.policy, None, revision="gone")
    # A folder the pinned commit lacks is refused before the run, not when the data stage reads it.
    with pytest.raises(BadInput, match="^data.data_dir data/Alpaca-13B: no such folder in PKU-Alignment/PKU-SafeRLHF"):
        preflight._check_dataset(cfg.data.dataset, revision=cfg.data.revision, data_dir="data/Alpaca-13B")


def test_the_preset_and_docs_say_what_differs_from_the_paper():
    text = (ROOT / "docs" / "PAPER_PRESET.md").read_text()
    for fragment in ("data/Alpaca-7B", "v0", "beaver-7b-v1.0-cost", "d2o-guided", "not pinned"):
        assert fragment in text
    assert yaml.safe_load((ROOT / "harness" / "presets" / "paper.yaml").read_text())["data"]["data_dir"]
