"""The command line: the README's commands run as written against a local mirror of every source (archives in their
real layouts), then a run reads the data from its default place; bad input gets one line and a non-zero exit."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FAST, ROOT, SMALL_DECODERS, TINY, run_cli
from helpers.fetch_server import serve, sha256, zip_folder

from ssl4gie.data import layouts
from ssl4gie.data.synthetic import (
    C3VD_VIDEOS,
    write_c3vd,
    write_cvc_clinicdb,
    write_hyperkvasir,
    write_hyperkvasir_unlabelled,
    write_kvasir_seg,
    write_pranet_set,
)
from ssl4gie.fetch.cli import main
from ssl4gie.fetch.registry import registry, sources_for_sweep


def readme_commands() -> list[list[str]]:
    """The arguments of every `python -m ssl4gie.fetch` line in the README's "Getting the data and weights"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Getting the data and weights", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return [shlex.split(line)[3:] for line in lines if line.startswith("python -m ssl4gie.fetch")]


def build_mirror(root: Path, src: Path) -> None:
    """Every file the README's commands fetch, in the layouts the real archives have (not their bytes)."""
    zip_folder(
        write_kvasir_seg(src / "kvasir", n=10, size_range=(48, 64)), root / "kvasir-seg.zip", top="Kvasir-SEG"
    )
    zip_folder(
        write_hyperkvasir(src / "hk"), root / "hyper-kvasir-labeled-images.zip"
    )  # labeled-images/ on top
    zip_folder(write_hyperkvasir_unlabelled(src / "hku", count=3), root / "hyper-kvasir-unlabeled-images.zip")
    kaggle = src / "kaggle"
    write_cvc_clinicdb(kaggle / "PNG", n=4, ext="png", size=(40, 32))
    write_cvc_clinicdb(kaggle / "TIF", n=4, ext="tif", size=(40, 32))
    zip_folder(kaggle, root / "cvcclinicdb.zip")
    tests = src / "TestDataset"
    for name in ("CVC-300", "CVC-ClinicDB", "CVC-ColonDB", "ETIS-LaribPolypDB", "Kvasir"):
        write_pranet_set(tests / name, n=2, size_range=(40, 48))
    zip_folder(tests, root / "TestDataset.zip", top="TestDataset/TestDataset")  # as one log reports it
    zip_folder(
        write_pranet_set(src / "train", n=3, size_range=(40, 48)),
        root / "TrainDataset.zip",
        top="TrainDataset",
    )
    videos = write_c3vd(src / "c3vd", dict.fromkeys(C3VD_VIDEOS, 1), size=(20, 16))
    for key in C3VD_VIDEOS:
        seq, code = key.split("/")
        name = layouts.c3vd_dataverse_name(seq.removesuffix("_under_review"), code)
        zip_folder(videos / key, root / f"{name}.zip", top=name)
    for source in registry().values():  # every weights file of the README's rows, under its saved name
        if source.store == "weights" and not source.drive_folder:
            (root / source.into).write_bytes(f"weights of {source.name}".encode())
    (root / "released" / "Depth_estimation").mkdir(parents=True)
    (
        root / "released" / "Depth_estimation" / "vit_b-ImageNet_class_init-frozen_False-dataset_C3VD.pth"
    ).write_bytes(b"a finetuned file")


def fetch_cli(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ssl4gie.fetch", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_readme_commands_run_as_written_then_a_run_reads_the_default_place(tmp_path):
    commands = readme_commands()
    assert ["--sweep", "study"] in commands and ["kvasir_seg"] in commands and len(commands) >= 8
    mirror = tmp_path / "mirror"
    build_mirror(mirror, tmp_path / "src")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SSL4GIE_DATA_DIR": str(tmp_path / "data"),
        "SSL4GIE_WEIGHTS_DIR": str(tmp_path / "weights"),
    }
    with serve(mirror) as server:
        extra = ["--mirror", server.url, "--quiet"]
        # the two published hashes cannot match test files: pin them to the test files first
        for name, file in (("kvasir_seg", "kvasir-seg.zip"), ("row=rn_in_sl", "resnet50-19c8e357.pth")):
            done = fetch_cli([name, "--sha256", sha256(mirror / file), *extra], tmp_path, env)
            assert done.returncode == 0, done.stderr
        for args in commands:
            done = fetch_cli([*args, *extra], tmp_path, env)
            assert done.returncode == 0, f"{args}: {done.stderr}"
        sweep_files = sum(len(s.files) or 1 for s in sources_for_sweep("study"))
        before = len(server.state.requests)
        again = fetch_cli(["--sweep", "study", *extra], tmp_path, env)
        assert again.returncode == 0 and len(server.state.requests) == before  # present and verified: nothing
    assert sweep_files >= 14
    check = fetch_cli(["--sweep", "study", "--check"], tmp_path, env)
    assert check.returncode == 0 and check.stdout.count(" verified ") == len(sources_for_sweep("study"))
    data = tmp_path / "data"
    assert (data / "TestDataset" / "CVC-300" / "images").is_dir()  # the doubly nested archive, placed as read
    assert len([p for p in (data / "C3VD").iterdir() if p.is_dir()]) == 22
    assert (data / "hyper-kvasir" / "labeled-images").is_dir() and (
        data / "hyper-kvasir" / "unlabeled-images"
    ).is_dir()
    assert (tmp_path / "weights" / "study" / "Depth_estimation").is_dir()

    # a run that reads Kvasir-SEG from its default place (no dataset.root)
    run = run_cli(
        [
            *TINY,
            *SMALL_DECODERS,
            *FAST,
            f"paths.output_root={tmp_path / 'out'}",
            f"paths.cache_dir={tmp_path / 'c'}",
        ],
        cwd=tmp_path,
        env={"SSL4GIE_DATA_DIR": str(data), "SSL4GIE_WEIGHTS_DIR": str(tmp_path / "weights")},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (metrics,) = (tmp_path / "out").rglob("metrics.json")
    result = json.loads(metrics.read_text())
    assert result["status"] == "complete" and result["n_test"] == 1  # 10 images: the study's 8/1/1 split


@pytest.fixture
def kvasir_mirror(tmp_path) -> Path:
    root = tmp_path / "mirror"
    zip_folder(
        write_kvasir_seg(tmp_path / "src", n=3, size_range=(40, 48)),
        root / "kvasir-seg.zip",
        top="Kvasir-SEG",
    )
    return root


def test_a_wrong_hash_is_one_line_and_exit_2(kvasir_mirror, tmp_path, capsys):
    with serve(kvasir_mirror) as server:
        rc = main(["kvasir_seg", f"paths.data_dir={tmp_path / 'data'}", "--mirror", server.url, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and [line for line in err if line.startswith("error:")] == [err[-1]]
    assert (
        sha256(kvasir_mirror / "kvasir-seg.zip") in err[-1]
        and registry()["kvasir_seg"].files[0].sha256 in err[-1]
    )
    assert not (tmp_path / "data" / "Kvasir-SEG").exists()


def test_check_reports_a_changed_file_and_exits_1(kvasir_mirror, tmp_path, capsys):
    data = f"paths.data_dir={tmp_path / 'data'}"
    with serve(kvasir_mirror) as server:
        pin = ["--sha256", sha256(kvasir_mirror / "kvasir-seg.zip")]
        assert main(["kvasir_seg", data, "--mirror", server.url, "--quiet", *pin]) == 0
    assert main(["kvasir_det", data, "--check"]) == 0
    assert re.search(r"kvasir_seg +verified", capsys.readouterr().out)
    box_file = tmp_path / "data" / "Kvasir-SEG" / "kavsir_bboxes.json"
    box_file.write_text(box_file.read_text() + " ")
    assert main(["kvasir_seg", data, "--check"]) == 1
    out = capsys.readouterr().out
    assert re.search(
        r"kvasir_seg +changed .*1 changed \(e\.g\. kavsir_bboxes\.json\).*python -m ssl4gie.fetch", out
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["nope"], r"unknown name 'nope': expected a dataset, a source or row=<row> \(c3vd, "),
        (["row=rn_xx_yy"], r"unknown row 'rn_xx_yy'; valid rows: rn_gn1m_d1"),
        (["--sweep", "nosweep"], r"unknown sweep 'nosweep': no sweeps/nosweep.yaml; valid: "),
        (
            ["kvasir_seg", "c3vd", "--sha256", "ab" * 32],
            r"--sha256 pins the hash of one source; this command names 2",
        ),
        (["c3vd", "--sha256", "ab" * 32], r"c3vd has 22 files; pin one as FILE=HEX"),
        (["kvasir_seg", "--sha256", "xyz"], r"expected 8 to 64 hex digits"),
        ([], r"name what to fetch"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    assert main([*args, f"paths.data_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(message, err), err
    assert not any(tmp_path.iterdir())


def test_an_unreachable_mirror_and_a_login_source(tmp_path, capsys):
    data = f"paths.data_dir={tmp_path / 'data'}"
    assert main(["pranet_train", data, "--mirror", "http://127.0.0.1:9", "--quiet"]) == 2
    assert "cannot be reached" in capsys.readouterr().err
    assert main(["cvc_clinicdb", data]) == 1  # never attempted: the page and the exact place are printed
    out = capsys.readouterr()
    assert "kaggle.com/datasets/balraj98/cvcclinicdb" in out.out + out.err
    assert str(tmp_path / "data" / "downloads" / "cvcclinicdb.zip") in out.out + out.err
    assert main(["row=rn_na_na", data]) == 0 and "nothing to fetch" in capsys.readouterr().out
