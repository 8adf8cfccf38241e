"""`status` of a run launched from another directory: the message says where it looked, why (a relative
paths.scratch resolves against the current directory) and where to run from, instead of advising a launch
that would train a second copy."""

from hpcrnn.cluster.status import main


def test_status_from_another_directory_names_the_place_to_run_from(tmp_path, tiny_corpus, monkeypatch, capsys):
    repo = tmp_path / "repo"
    (repo / "configs").mkdir(parents=True)
    cfg = repo / "configs" / "x.yaml"
    cfg.write_text(f"run: {{name: x}}\ndata: {{corpus: {tiny_corpus}}}\n")
    (repo / "scratch" / "x").mkdir(parents=True)  # launched from the repository root
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code = main([str(cfg)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1, err
    assert f"run this command from {repo}" in err and str(elsewhere) in err
    assert "launch it first" not in err


def test_status_of_a_run_never_launched_says_where_it_looked(tmp_path, tiny_corpus, monkeypatch, capsys):
    cfg = tmp_path / "x.yaml"
    cfg.write_text(f"run: {{name: x}}\ndata: {{corpus: {tiny_corpus}}}\n")
    monkeypatch.chdir(tmp_path)
    assert main([str(cfg)]) != 0
    err = capsys.readouterr().err
    assert "launch it first" in err and f"current directory {tmp_path}" in err
