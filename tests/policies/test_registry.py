"""Selecting policies by name, class_path, decorator alias and entry point."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from jsonargparse import ArgumentParser

import memory_policies
from memory_policies import MemoryPolicy, SlowFast, build_policy, get_policy_class, load_plugins
from memory_policies.testing import PolicyContract

DOCS = Path(__file__).parents[2] / "docs"


def parse_memory(yaml_text: str) -> MemoryPolicy:
    """Parse like LightningCLI does for a ``memory: MemoryPolicy`` constructor argument."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--memory", type=MemoryPolicy)
    cfg = parser.parse_string(yaml_text)
    return parser.instantiate_classes(cfg).memory


def test_registered_short_names_resolve_in_yaml():
    policy = parse_memory("memory: slow_fast")
    assert isinstance(policy, SlowFast) and policy.slow == 12
    policy = parse_memory("memory: {class_path: sliding_window, init_args: {sink: 1, window: 7}}")
    assert type(policy).__mro__[1].__name__ == "SlidingWindow" and policy.window == 7
    assert isinstance(parse_memory("memory: Keyframe"), memory_policies.Keyframe)


def test_unknown_init_arg_fails_loudly():
    with pytest.raises(Exception, match="sinkk"):
        parse_memory("memory: {class_path: SlowFast, init_args: {sinkk: 3}}")


def test_unknown_name_lists_available_names():
    with pytest.raises(KeyError, match="slow_fast") as error:
        build_policy("no_such_policy")
    assert "no_such_policy" in str(error.value) and "sliding_window" in str(error.value)


def test_bad_init_args_name_the_policy():
    with pytest.raises(TypeError, match="slow_fast"):
        build_policy("slow_fast", windw=3)


def test_test_local_module_selected_by_class_path(tmp_path, monkeypatch):
    (tmp_path / "local_policies.py").write_text(textwrap.dedent('''
        from memory_policies import MemoryPolicy

        class LastOnly(MemoryPolicy):
            def budget(self, chunk_frames):
                return 1

            def _update_regions(self, state, new_frames, summaries):
                state.regions["fast"] = [new_frames[-1]]
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    policy = parse_memory("memory: {class_path: local_policies.LastOnly, init_args: {sink: 0}}")
    assert type(policy).__name__ == "LastOnly"
    state = policy.new_state(2)
    policy.commit(state)
    policy.commit(state)
    assert policy.read(state).frames == [3]


def test_documented_example_registers_a_short_name_and_passes_the_contract(monkeypatch):
    monkeypatch.syspath_prepend(str(DOCS / "examples"))
    import every_other

    assert get_policy_class("every_other").__mro__[1] is every_other.EveryOther
    policy = parse_memory("memory: {class_path: every_other, init_args: {reach: 6}}")
    assert isinstance(policy, every_other.EveryOther) and policy.reach == 6

    class Contract(PolicyContract):
        def make_policy(self):
            return every_other.EveryOther(sink=1, reach=8)

    contract = Contract()
    for name in dir(contract):
        if name.startswith("test_"):
            getattr(contract, name)()


def test_entry_point_plugin_is_discovered(tmp_path, monkeypatch):
    package = tmp_path / "cfplugin_demo"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent('''
        from memory_policies import MemoryPolicy

        class Reservoir(MemoryPolicy):
            def budget(self, chunk_frames):
                return 2

            def _update_regions(self, state, new_frames, summaries):
                state.regions["fast"] = new_frames[-2:]
    '''))
    dist = tmp_path / "cfplugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cfplugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[cf_lightning.memory_policies]\nreservoir = cfplugin_demo:Reservoir\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "reservoir" in load_plugins()
    assert get_policy_class("Reservoir").__name__ == "Reservoir"
    policy = parse_memory("memory: reservoir")
    assert policy.budget(3) == 2
    sys.modules.pop("cfplugin_demo", None)


def test_docs_show_the_example_exactly_as_tested():
    example = (DOCS / "examples" / "every_other.py").read_text()
    assert example in (DOCS / "memory_policies.md").read_text()
