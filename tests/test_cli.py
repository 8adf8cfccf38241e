"""Every entry point: --help, and bad config paths give one line and exit 2. Property-based: random YAML
documents and random overrides give a valid config or a one-line ConfigError, never anything else."""

from __future__ import annotations

import dataclasses
import os
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcrnn.config import Config, load_config
from hpcrnn.errors import ConfigError
from tests.helpers import run_module

ENTRY_POINTS = [
    "hpcrnn.preprocess",
    "hpcrnn.train",
    "hpcrnn.generate",
    "hpcrnn.launch",
    "hpcrnn.status",
    "hpcrnn.evaluate",
]
# these three load torch before they read their arguments: about 3 s a process on 2 cores, so slow
LOAD_TORCH = {"hpcrnn.train", "hpcrnn.generate", "hpcrnn.evaluate"}
ENTRY_POINT_PARAMS = [pytest.param(m, marks=pytest.mark.slow) if m in LOAD_TORCH else m for m in ENTRY_POINTS]


@pytest.mark.parametrize("module", ENTRY_POINT_PARAMS)
def test_help(module):
    r = run_module(module, "--help")
    assert r.returncode == 0 and "usage:" in r.stdout and "config" in r.stdout.lower()


@pytest.mark.parametrize("module", ENTRY_POINT_PARAMS)
def test_bad_config_paths_one_line_exit_2(module, tmp_path):
    bad_utf8 = tmp_path / "binary.yaml"
    bad_utf8.write_bytes(b"model: {cell: \xff\xfe}\n")
    cases = {"missing": tmp_path / "nope.yaml", "directory": tmp_path, "unreadable": bad_utf8}
    if os.geteuid() != 0:  # root reads anything: there a file of undecodable bytes stands in
        locked = tmp_path / "locked.yaml"
        locked.write_text("model: {}\n")
        locked.chmod(0)
        cases["unreadable-perm"] = locked
    for what, path in cases.items():
        r = run_module(module, str(path))
        assert r.returncode == 2, (what, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, (what, r.stderr)
        assert str(path) in lines[0], (what, lines[0])


# ---------------------------------------------------------------- property-based

# every section of a config and its keys: what random documents draw from (plus near misses)
FIELDS = {
    section: [f.name for f in dataclasses.fields(cls)]
    for section, cls in typing.get_type_hints(Config).items()
    if section != "source"
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["lstm", "gru", "0.5", "1e-3", "${HOME}", "${NOPE_X}", "^Title:", "[", "auto"]),
)
values = st.recursive(
    scalars,
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=8), kids, max_size=3)),
    max_leaves=6,
)


@st.composite
def documents(draw):
    doc = {}
    for section in draw(st.lists(st.sampled_from(list(FIELDS) + ["bogus", "modle"]), max_size=4, unique=True)):
        keys = FIELDS.get(section, ["x"]) + ["hiden", "zz"]
        if draw(st.booleans()):
            doc[section] = draw(values)
        else:
            doc[section] = {k: draw(values) for k in draw(st.lists(st.sampled_from(keys), max_size=4, unique=True))}
    return doc


@st.composite
def overrides(draw):
    section = draw(st.sampled_from(list(FIELDS) + ["nope"]))
    key = draw(st.sampled_from(FIELDS.get(section, ["x"]) + ["bad key", ""]))
    text = draw(st.one_of(st.text(max_size=10), st.sampled_from(["[1", "{a: 1}", "true", "3", "-1", "gru", "0.5"])))
    sep = draw(st.sampled_from(["=", "=", ":", ""]))
    return f"{section}.{key}{sep}{text}"


def _check_outcome(path, ovs):
    try:
        cfg = load_config(path, ovs)
    except ConfigError as e:
        msg = str(e)
        assert msg and "\n" not in msg
        return
    assert isinstance(cfg, Config) and cfg.run.name


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=documents(), ovs=st.lists(overrides(), max_size=3))
def test_random_documents_and_overrides(tmp_path, doc, ovs):
    p = tmp_path / "random.yaml"
    p.write_text(yaml.safe_dump(doc, allow_unicode=True))
    _check_outcome(p, ovs)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80))
def test_random_text_files(tmp_path, text):
    p = tmp_path / "random.yaml"
    p.write_text(text)
    _check_outcome(p, [])
