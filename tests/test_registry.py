"""The method registry: every method named once by "module:Class", loaded only when used, and
checked when loaded."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness import registry
from harness.errors import BadInput
from harness.registry import METHODS, Method, get_method, method_names, registered_methods

ROOT = Path(__file__).parents[1]


def test_every_method_resolves_by_its_name():
    methods = registered_methods()
    assert list(methods) == method_names() == sorted(METHODS)
    assert len(methods) == 15  # D²O and its 3 variants, 10 baselines, the untrained base
    for name, cls in methods.items():
        assert cls.name == name and get_method(name) is cls


def test_every_method_class_of_the_builtin_packages_is_in_the_table():
    """A method class written but not added to METHODS would silently be unknown."""
    defined = {}
    for path in sorted([*(ROOT / "baselines").glob("*.py"), *(ROOT / "d2o").glob("*.py")]):
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for attr, cls in vars(module).items():
            if inspect.isclass(cls) and issubclass(cls, Method) and cls.__module__ == module.__name__:
                defined[cls.name] = f"{module.__name__}:{attr}"
    assert defined == METHODS


def test_families_default_to_the_methods_own_name():
    methods = registered_methods()
    assert methods["dpo-full"].family == "dpo-full" and methods["npo"].family == "npo"
    assert {methods[n].family for n in ("d2o", "d2o-online", "d2o-nosample")} == {"d2o"}


def test_an_unknown_method_is_refused_naming_the_known_ones():
    with pytest.raises(BadInput, match=r"unknown method 'd2o-fast'; known: base, d2o, "):
        get_method("d2o-fast")


def test_naming_the_methods_loads_none_and_loading_one_loads_only_its_module():
    code = textwrap.dedent("""
        import sys
        from harness.registry import get_method, method_names
        assert len(method_names()) == 15
        plugins = lambda: sorted(m for m in sys.modules if m.split(".")[0] in ("baselines", "d2o"))
        print(plugins())
        get_method("dpo")
        print(plugins())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout.splitlines()
    assert out == ["[]", "['baselines', 'baselines.dpo']"]


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """A method module outside the packages, registered under the names its classes claim."""

    def write(source: str, **entries: str) -> None:
        (tmp_path / "extra_methods.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(tmp_path))
        sys.modules.pop("extra_methods", None)
        for name, attr in entries.items():
            monkeypatch.setitem(METHODS, name, f"extra_methods:{attr}")
            monkeypatch.delitem(registry._LOADED, name, raising=False)

    return write


HEADER = """
from dataclasses import dataclass
from harness.registry import FloatDim, Method

@dataclass
class Config:
    beta: float = 0.1
"""


def test_a_method_naming_an_unknown_role_is_refused_when_loaded(plugin_module):
    plugin_module(HEADER + """
class Odd(Method):
    name = "odd"
    summary = "odd"
    Config = Config
    roles = ("negative", "mystery")
    def loss(self, policy, reference): ...
""", odd="Odd")
    with pytest.raises(TypeError, match=r"method odd names unknown roles \['mystery'\]"):
        get_method("odd")


def test_a_search_space_naming_no_config_field_is_refused_when_loaded(plugin_module):
    plugin_module(HEADER + """
class Odd(Method):
    name = "odd"
    summary = "odd"
    Config = Config
    roles = ("negative",)
    search_space = {"gamma": FloatDim(0.1, 1.0)}
    def loss(self, policy, reference): ...
""", odd="Odd")
    with pytest.raises(TypeError, match="search_space names 'gamma', not a field of its Config"):
        get_method("odd")


def test_a_table_line_whose_class_has_another_name_is_refused(plugin_module):
    plugin_module(HEADER + """
class Odd(Method):
    name = "odd"
    summary = "odd"
    Config = Config
    roles = ("negative",)
    def loss(self, policy, reference): ...
""", even="Odd")
    with pytest.raises(TypeError, match=r"METHODS\['even'\] names extra_methods:Odd, whose name is 'odd'"):
        get_method("even")
