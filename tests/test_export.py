"""tl_lightning.export and tl-export: each format loads back the way a user loads it and gives the module's logits."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from tl_lightning import TransferClassifier
from tl_lightning.errors import CheckpointError, ConfigurationError, ExportError, UnknownNameError
from tl_lightning.export import FORMATS, export, read_manifest

LABELS = ["cat", "dog", "eel"]


def _image_model(**kwargs: object) -> TransferClassifier:
    model = TransferClassifier("timm:test_resnet", labels=LABELS, pretrained=False, **kwargs)
    model.set_preprocess(model.preprocess.with_size(32))
    return model


def _text_model(folder: Path, **kwargs: object) -> TransferClassifier:
    return TransferClassifier(f"hf:{folder}", labels=["neg", "pos"], **kwargs)


def _texts() -> list[str]:
    # lengths differ from the batches the export traces and checks with
    return ["a good movie", "an awful, boring film with a bad plot and a bad actor", "fun"]


@torch.no_grad()
def _logits(model: TransferClassifier, batch: object) -> torch.Tensor:
    return model.eval()(batch)


# --- one test per format: load like a user, compare on a fresh batch ------------------------


def test_torchscript_image_and_text(tiny_bert_dir: Path, tmp_path: Path) -> None:
    model = _image_model()
    model.train()
    folder = export(model, tmp_path / "ts", format="torchscript")
    assert model.training, "the export restores the module's train mode"
    module = torch.jit.load(str(folder / "model.pt"))
    pixels = torch.randn(5, 3, 32, 32)
    torch.testing.assert_close(module(pixels), _logits(model, pixels), atol=1e-4, rtol=0)
    manifest = read_manifest(folder)
    assert manifest["labels"] == LABELS and manifest["inputs"] == ["pixel_values"]
    assert manifest["preprocess"]["input_size"] == [3, 32, 32]
    assert 0 <= manifest["check"]["max_abs_diff"] <= 1e-4

    text_model = _text_model(tiny_bert_dir, backbone_kwargs={"pooling": "mean", "max_length": 16})
    folder = export(text_model, tmp_path / "ts_text", format="torchscript")
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(folder)(_texts(), truncation=True, padding=True, return_tensors="pt")
    assert tokens["input_ids"].shape[1] <= 16, "the saved tokenizer truncates at the trained max_length"
    module = torch.jit.load(str(folder / "model.pt"))
    names = read_manifest(folder)["inputs"]
    assert names == ["input_ids", "attention_mask", "token_type_ids"]
    got = module(*(tokens[n] for n in names))
    torch.testing.assert_close(got, _logits(text_model, dict(tokens)), atol=1e-4, rtol=0)


def test_onnx_text_in_onnxruntime_with_free_batch_and_length(tiny_bert_dir: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    text_model = _text_model(tiny_bert_dir, backbone_kwargs={"pooling": "cls"})
    folder = export(text_model, tmp_path / "onnx_text", format="onnx")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    for texts in (_texts(), ["one"]):
        tokens = text_model.preprocess(texts)
        feed = {i.name: tokens[i.name].numpy() for i in session.get_inputs()}
        (logits,) = session.run(["logits"], feed)
        torch.testing.assert_close(torch.from_numpy(logits), _logits(text_model, tokens), atol=1e-4, rtol=0)
    assert (folder / "tokenizer_config.json").is_file()


@pytest.mark.slow
def test_onnx_image_in_onnxruntime(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = _image_model(task="multilabel")
    folder = export(model, tmp_path / "onnx", format="onnx")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch_size in (1, 4):  # the batch axis is free
        pixels = torch.randn(batch_size, 3, 32, 32)
        (logits,) = session.run(["logits"], {"pixel_values": pixels.numpy()})
        torch.testing.assert_close(torch.from_numpy(logits), _logits(model, pixels), atol=1e-4, rtol=0)
    assert read_manifest(folder)["activation"] == "sigmoid"


def test_timm_folder_loads_with_timm_and_keeps_the_head(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import load_file

    model = _image_model()
    folder = export(model, tmp_path / "timm", format="timm")
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 3
    assert config["label_names"] == LABELS
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["pretrained_cfg"]["mean"] == pytest.approx(list(model.preprocess.mean))
    pixels = torch.randn(4, 3, 32, 32)
    expected = _logits(model, pixels)

    hub_style = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(hub_style(pixels), expected, atol=1e-4, rtol=0)
    plain = timm.create_model("test_resnet", num_classes=3).eval()
    plain.load_state_dict(load_file(str(folder / "model.safetensors")))  # strict: every key matches
    torch.testing.assert_close(plain.get_classifier().weight, model.head.fc.weight)
    with torch.no_grad():
        torch.testing.assert_close(plain(pixels), expected, atol=1e-4, rtol=0)


def test_hf_text_classifier_loads_with_auto_classes(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, BertModel

    model = _text_model(
        tiny_bert_dir, task="multilabel", head="mlp", head_hidden=[16], backbone_kwargs={"pooling": "mean"}
    )
    folder = export(model, tmp_path / "hf", format="hf")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "bert" and config["problem_type"] == "multi_label_classification"
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    assert "AutoModel" not in config["auto_map"], "AutoModel must keep loading the plain encoder"

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokens = dict(tokenizer(_texts(), truncation=True, padding=True, return_tensors="pt"))
    classifier = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = classifier(**tokens).logits
        torch.testing.assert_close(logits, _logits(model, tokens), atol=1e-4, rtol=0)
        loss = classifier(**tokens, labels=torch.ones(3, 2)).loss  # multi-label loss on float targets
    assert torch.isfinite(loss)

    encoder = AutoModel.from_pretrained(folder, add_pooling_layer=False).eval()
    assert type(encoder) is BertModel
    for name, tensor in model.backbone.model.state_dict().items():
        torch.testing.assert_close(encoder.state_dict()[name], tensor)


def test_hf_vit_with_cls_and_linear_head_is_the_builtin_class(tiny_vit_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = TransferClassifier(f"hf:{tiny_vit_dir}", labels=LABELS, backbone_kwargs={"pooling": "cls"})
    folder = export(model, tmp_path / "hf_vit", format="hf")
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["ViTForImageClassification"]
    builtin = AutoModelForImageClassification.from_pretrained(folder).eval()  # no remote code
    assert type(builtin).__name__ == "ViTForImageClassification"
    AutoImageProcessor.from_pretrained(folder)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(builtin(pixel_values=pixels).logits, _logits(model, pixels), atol=1e-4, rtol=0)


# --- what is refused, and how ----------------------------------------------------------------


def test_unknown_format_lists_the_choices(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match=r"format must be one of .*'onnx'.*did you mean 'onnx'"):
        export(_image_model(), tmp_path / "x", format="onx")  # type: ignore[arg-type]
    assert FORMATS == ("hf", "timm", "torchscript", "onnx")


def test_formats_that_do_not_fit_the_model_name_the_ones_that_do(tiny_bert_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"format 'hf' needs a Hugging Face backbone.*'torchscript' or 'onnx'"):
        export(_image_model(), tmp_path / "a", format="hf")
    with pytest.raises(ConfigurationError, match=r"format 'timm' needs a timm backbone.*'torchscript' or 'onnx'"):
        export(_text_model(tiny_bert_dir), tmp_path / "b", format="timm")
    with pytest.raises(ConfigurationError, match=r"MLPHead.*format='torchscript' or 'onnx'"):
        export(_image_model(head="mlp", head_hidden=[8]), tmp_path / "c", format="timm")
    assert not any(tmp_path.iterdir()), "nothing is written for a refused export"


def test_onnx_without_its_packages_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(ConfigurationError, match=r"onnxruntime is missing.*pip install 'tl-lightning\[export\]'"):
        export(_image_model(), tmp_path / "onnx", format="onnx")


def test_non_empty_output_needs_overwrite_which_keeps_other_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "model.pt").write_text("stale")
    model = _image_model()
    with pytest.raises(ConfigurationError, match=r"exists and is not empty.*overwrite"):
        export(model, out, format="torchscript")
    assert (out / "model.pt").read_text() == "stale"
    export(model, out, format="torchscript", overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    torch.jit.load(str(out / "model.pt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no staging folder is left behind"


def test_an_export_that_does_not_match_the_module_raises_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tl_lightning.export import _common

    real = _common.reference_logits
    monkeypatch.setattr(_common, "reference_logits", lambda model, batch: real(model, batch) + 1e-3)
    with pytest.raises(ExportError, match=r"differs from the module by up to 0\.001.*atol=0\.0001"):
        export(_image_model(), tmp_path / "ts", format="torchscript")
    assert not any(tmp_path.iterdir())


# --- the tl-export app ---------------------------------------------------------------------


def _save_checkpoint(model: TransferClassifier, path: Path) -> Path:
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.strategy.connect(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    return path


def _run_app(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    from tl_lightning.cli.export import main

    monkeypatch.setattr(sys, "argv", ["tl-export", *argv])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    GlobalHydra.instance().clear()
    code = 0
    try:
        main()
    except SystemExit as exit_info:
        code = int(exit_info.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_exports_a_checkpoint_and_reports_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    model = _image_model()
    ckpt = _save_checkpoint(model, tmp_path / "run" / "checkpoints" / "best.ckpt")

    code, out, err = _run_app([f"ckpt_path={ckpt}", "format=torchscript"], monkeypatch, capsys)
    assert code == 0, err
    folder = ckpt.parent / "best_torchscript"  # default: next to the checkpoint
    assert f"wrote {folder} (torchscript): model.pt, tl_lightning.json" in out
    assert "max |logits - module logits| = " in out and "torch.jit.load" in out
    pixels = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(torch.jit.load(str(folder / "model.pt"))(pixels), _logits(model, pixels), atol=1e-4, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "no Hydra run folder or log file"

    for argv, expected in [
        ([f"ckpt_path={ckpt}", "format=torchscript"], r"exists and is not empty"),
        ([f"ckpt_path={ckpt}", "format=onx"], r"format must be one of \['hf', 'timm', 'torchscript', 'onnx'\]"),
        ([f"ckpt_path={ckpt}", "format=hf", "output=hf"], r"format 'hf' needs a Hugging Face backbone"),
        ([f"ckpt_path={tmp_path / 'missing.ckpt'}"], CheckpointError.__name__),
        (["format=onnx"], r"ckpt_path is required"),
    ]:
        code, out, err = _run_app(argv, monkeypatch, capsys)
        assert code == 1, (argv, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tl-export: error: "), err
        assert re.search(expected, lines[0]), lines[0]


def test_a_lora_model_is_exported_merged_and_keeps_its_adapter(tmp_path: Path) -> None:
    from tl_lightning.finetune.lora import add_lora, get_adapter

    model = TransferClassifier("timm:test_vit", labels=LABELS, pretrained=False).eval()
    add_lora(model, r=4)
    with torch.no_grad():  # a trained adapter: B is zero at init, which would hide a missing merge
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    folder = export(model, tmp_path / "ts_lora", format="torchscript")
    assert get_adapter(model) is not None, "the caller's model keeps its adapter"
    module = torch.jit.load(str(folder / "model.pt"))
    assert not any("lora" in n for n, _ in module.named_parameters())
    pixels = torch.randn(3, 3, 160, 160)
    torch.testing.assert_close(module(pixels), _logits(model, pixels), atol=1e-4, rtol=0)
