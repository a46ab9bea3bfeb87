"""Fast unit tests of the training package: config, data discovery, images, models, metrics."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from training_support import COLORS, write_color_images
from imgclf import metrics
from imgclf.artifact import ArtifactError, ModelMeta, load_artifact, read_meta, save_artifact
from imgclf.config import SEED_SEARCH_SPACE, build_parser, parse_args
from imgclf.data import build_samples, display_name, resolve_splits
from imgclf.failure import TrainingError
from imgclf.images import ImageDecodeError, decode_image
from imgclf.models import ModelError, build_model, head_parameter_names
from imgclf.training import make_scheduler


# ---- metrics: one regex module for SageMaker MetricDefinitions --------------------------------

def test_metric_lines_round_trip_through_the_definitions():
    log = "\n".join([metrics.format_epoch_line(1, 2, 2.5, 2.25, 0.125, 12.5, 456.7),
                     metrics.format_epoch_line(2, 2, 1.5, 1.75, 0.5, 11.0, 500.0),
                     metrics.format_test_line(1.2345, 0.75)])
    found = metrics.parse_metrics(log)
    assert found["train_loss"] == [2.5, 1.5]
    assert found["valid_loss"] == [2.25, 1.75]
    assert found["valid_acc"] == [0.125, 0.5]
    assert found["epoch_time"] == [12.5, 11.0]
    assert found["images_per_sec"] == [456.7, 500.0]
    assert found["average test loss"] == [1.2345]
    assert found["test_acc"] == [0.75]
    names = [d["Name"] for d in metrics.METRIC_DEFINITIONS]
    assert metrics.OBJECTIVE_METRIC in names and len(names) == len(set(names))


def test_metric_regexes_do_not_confuse_test_loss_with_valid_loss():
    assert "valid_loss" not in metrics.parse_metrics(metrics.format_test_line(0.5, 0.5))
    assert "average test loss" not in metrics.parse_metrics(
        metrics.format_epoch_line(1, 1, 1, 1, 1, 1, 1))
    # other log lines may mention the same names; only the metric lines count
    assert metrics.parse_metrics("rule=Overfit status=IssuesFound epoch=1 train_loss=0.1 "
                                 "valid_loss=9 valid_acc=0.2 test_acc=0.3") == {}


# ---- config --------------------------------------------------------------------------------

def test_both_spellings_and_sagemaker_booleans():
    a = parse_args(["--batch_size", "256", "--lr", "0.003", "--freeze_backbone", "True",
                    "--label-smoothing", "0.1", "--image_size", "64"])
    assert (a.batch_size, a.lr, a.freeze_backbone, a.label_smoothing, a.image_size) == (256, 0.003, True, 0.1, 64)
    assert parse_args(["--batch-size", "128", "--freeze-backbone", "false"]).freeze_backbone is False


def test_tuning_hyperparameters_of_sagemaker_are_tolerated():
    a = parse_args(["--_tuning_objective_metric", "average test loss", "--epochs", "2"])
    assert a.epochs == 2


@pytest.mark.parametrize("argv,needle", [
    (["--lr", "-1"], "lr must be > 0"),
    (["--batch-size", "0"], "batch-size"),
    (["--epochs", "zero"], "epochs"),
    (["--optimizer", "lbfgs"], "optimizer"),
    (["--label-smoothing", "1.5"], "label-smoothing"),
    (["--freeze-backbone", "maybe"], "boolean"),
    (["--no-such-flag", "1"], "unknown option"),
    (["--crop-scale", "0"], "crop-scale must be in (0, 1]"),
    (["--image-size", "64", "--resize-size", "32"], "resize-size must be 0 (auto) or >= image-size 64"),
])
def test_bad_hyperparameters_raise_a_clear_error(argv, needle):
    with pytest.raises(TrainingError, match="bad hyperparameter") as e:
        parse_args(argv)
    assert needle in str(e.value)


def test_help_states_defaults_and_seed_space():
    text = " ".join(build_parser().format_help().split())
    assert "(default: resnet18)" in text and "(default: 128)" in text
    assert SEED_SEARCH_SPACE["batch-size"]["values"] == [128, 256, 512]
    assert (SEED_SEARCH_SPACE["lr"]["min"], SEED_SEARCH_SPACE["lr"]["max"]) == (0.001, 0.01)


def test_sm_variables_are_path_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("SM_CHANNEL_TRAIN", str(tmp_path / "tr"))
    monkeypatch.setenv("SM_CHANNEL_VALIDATION", str(tmp_path / "va"))
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "m"))
    a = parse_args([])
    assert (a.train_dir, a.valid_dir, a.model_dir) == (str(tmp_path / "tr"), str(tmp_path / "va"), str(tmp_path / "m"))


# ---- data discovery ---------------------------------------------------------------------------

def test_one_folder_with_validation_alias_and_mixed_case_extensions(tmp_path, caplog):
    write_color_images(tmp_path, COLORS, {"train": 2, "test": 1}, size=8, ext=".JPG")
    write_color_images(tmp_path / "x", COLORS, {"validation": 1}, size=8, ext=".Png")
    (tmp_path / "x" / "validation").rename(tmp_path / "validation")
    red = tmp_path / "train" / "001.Red"
    (red / "notes.txt").write_text("not an image")
    for name, fmt in [("a.webp", "WEBP"), ("b.BMP", "BMP"), ("c.tiff", "TIFF"), ("d.gif", "GIF")]:
        Image.new("RGB", (8, 8), (255, 0, 0)).save(red / name, fmt)
    (red / ".DS_Store").write_bytes(b"\0")  # hidden: neither an image nor reported
    (red / "._e.jpg").write_bytes(b"\0")  # macOS's resource fork beside a copied file
    splits = resolve_splits(str(tmp_path), None, None, None)
    assert splits.valid.endswith("validation")
    with caplog.at_level("WARNING", logger="imgclf.data"):
        classes, samples = build_samples(splits)
    assert classes == sorted(COLORS)
    # webp, BMP and TIFF are images (torchvision's ImageFolder list); .gif and .txt are not,
    # and the log says so rather than training on fewer images without a word
    assert len(samples["train"]) == 6 + 3 and len(samples["valid"]) == 3
    assert len(samples["test"]) == 3
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and warned[0].startswith("train: skipped 2 file(s)"), warned
    assert ".gif 1" in warned[0] and ".txt 1" in warned[0] and "DS_Store" not in warned[0]


def test_a_class_missing_from_valid_is_fine_but_an_extra_one_is_not(tmp_path):
    write_color_images(tmp_path, COLORS, {"train": 2, "test": 1}, size=8)
    write_color_images(tmp_path, {"001.Red": (255, 0, 0)}, {"valid": 1}, size=8)
    classes, samples = build_samples(resolve_splits(str(tmp_path), None, None, None))
    assert len(classes) == 3 and {y for _, y in samples["valid"]} == {0}
    write_color_images(tmp_path, {"004.Purple": (128, 0, 128)}, {"test": 1}, size=8)
    with pytest.raises(TrainingError, match="test has classes that train lacks: 004.Purple"):
        build_samples(resolve_splits(str(tmp_path), None, None, None))


@pytest.mark.parametrize("layout,needle", [
    ({}, "no train/ folder"),
    ({"train": 1}, "no validation data"),
])
def test_missing_splits_are_named(tmp_path, layout, needle):
    write_color_images(tmp_path, COLORS, layout, size=8)
    with pytest.raises(TrainingError, match=needle):
        resolve_splits(str(tmp_path), None, None, None)


def test_empty_train_and_single_class_are_refused(tmp_path):
    (tmp_path / "train" / "001.Empty").mkdir(parents=True)
    write_color_images(tmp_path, COLORS, {"valid": 1}, size=8)
    with pytest.raises(TrainingError, match="no class folders with images"):
        build_samples(resolve_splits(str(tmp_path), None, None, None))
    write_color_images(tmp_path, {"001.Red": (255, 0, 0)}, {"train": 2}, size=8)
    with pytest.raises(TrainingError, match="at least 2"):
        build_samples(resolve_splits(str(tmp_path), None, None, None))


def test_no_data_at_all_names_both_ways_to_give_it():
    with pytest.raises(TrainingError, match="SM_CHANNEL_TRAIN.*SM_CHANNEL_TRAINING"):
        resolve_splits(None, None, None, None)


def test_display_names():
    assert display_name("001.Affenpinscher") == "Affenpinscher"
    assert display_name("Golden_Retriever") == "Golden_Retriever"


# ---- images: the ugly cases -------------------------------------------------------------------

def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode,fmt", [("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"),
                                      ("P", "PNG"), ("I;16", "PNG"), ("LA", "PNG"), ("1", "PNG")])
def test_every_mode_decodes_to_rgb(mode, fmt):
    img = Image.new("RGB", (20, 10), (200, 50, 50)).convert(mode)
    out = decode_image(_encode(img, fmt))
    assert out.mode == "RGB" and out.size == (20, 10)


def test_sixteen_bit_range_is_scaled_not_clipped():
    a = (np.arange(100, dtype=np.uint16).reshape(10, 10) * 600)
    out = np.asarray(decode_image(_encode(Image.fromarray(a), "PNG")))
    assert out.min() == 0 and out.max() == 255


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds no pixel data (a 'bomb' header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def test_pixel_limit_is_checked_from_the_header_and_can_be_raised(monkeypatch):
    import imgclf.images
    bomb = _png_header(10_000, 10_000)  # 100 Mpx: over the default 64 Mpx and over PIL's 89 Mpx
    with pytest.raises(ImageDecodeError, match="10000x10000 = 100000000 pixels, over the limit"):
        decode_image(bomb)
    monkeypatch.setattr(imgclf.images, "MAX_PIXELS", 200_000_000)
    with pytest.raises(ImageDecodeError, match="cannot decode"):  # passes the limit, no pixels
        decode_image(bomb)


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert decode_image(_encode(img, "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (30, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    assert decode_image(_encode(img, "JPEG", exif=exif)).size == (10, 30)


def test_truncated_empty_garbage_and_bombs_raise_decode_errors(monkeypatch):
    good = _encode(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")
    for data, needle in [(good[: len(good) // 2], "cannot decode"), (b"", "empty"),
                         (b"not an image at all", "not a recognised image")]:
        with pytest.raises(ImageDecodeError, match=needle):
            decode_image(data)
    import imgclf.images
    monkeypatch.setattr(imgclf.images, "MAX_PIXELS", 1000)
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_image(good)


# ---- models -----------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "squeezenet1_1", "googlenet"])
def test_any_torchvision_arch_gets_an_n_class_head(arch):
    m = build_model(arch, 5, freeze_backbone=True).eval()
    assert m(torch.zeros(1, 3, 64, 64)).shape == (1, 5)
    assert {n for n, p in m.named_parameters() if p.requires_grad} == head_parameter_names(m)


def test_unknown_arch_and_bad_weights_are_explained(tmp_path):
    with pytest.raises(ModelError, match="unknown architecture 'resnet19'"):
        build_model("resnet19", 3)
    with pytest.raises(ModelError, match="does not exist"):
        build_model("resnet18", 3, weights=str(tmp_path / "nope.pt"))
    torch.save(build_model("mobilenet_v3_small", 3).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ModelError, match="do not fit"):
        build_model("resnet18", 3, weights=str(tmp_path / "other.pt"))


def test_imagenet_shaped_state_dict_loads_offline_with_a_new_head(tmp_path):
    src = build_model("resnet18", 1000)
    torch.save(src.state_dict(), tmp_path / "resnet18-imagenet.pth")
    m = build_model("resnet18", 7, weights=str(tmp_path))  # a 'pretrained' channel folder
    assert torch.equal(m.conv1.weight, src.conv1.weight) and m.fc.out_features == 7


def test_imagenet_download_failure_names_the_offline_alternatives(monkeypatch, tmp_path):
    import torch.hub
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*a, **k):
        raise OSError("network is unreachable")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ModelError) as e:
        build_model("resnet18", 3, weights="imagenet")
    assert "--weights PATH" in str(e.value) and "pretrained" in str(e.value) and "--weights none" in str(e.value)


# ---- artifact ---------------------------------------------------------------------------------

def test_artifact_round_trip_and_corruption(tmp_path):
    model = build_model("resnet18", 3).eval()
    save_artifact(str(tmp_path), model.state_dict(), ModelMeta(arch="resnet18", classes=["a", "b", "c"], image_size=64, resize_size=73))
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["num_classes"] == 3 and meta["versions"]["torch"] == torch.__version__
    loaded, m = load_artifact(str(tmp_path))
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(loaded(x), model(x)) and m.image_size == 64
    (tmp_path / "model.pt").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="cannot be read"):
        load_artifact(str(tmp_path))
    (tmp_path / "model.json").write_text('{"arch": "resnet18", "classes": ["a"], "num_classes": 2}')
    with pytest.raises(ArtifactError, match="num_classes=2"):
        read_meta(str(tmp_path))


# ---- schedule ---------------------------------------------------------------------------------

def test_cosine_schedule_warms_up_then_decays_to_zero():
    args = parse_args(["--epochs", "4", "--lr", "0.1", "--warmup-epochs", "1"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
    sched = make_scheduler(opt, args, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01) and max(lrs) == pytest.approx(0.1)
    assert lrs.index(max(lrs)) == 9 and lrs[-1] < 0.001
    assert all(b <= a + 1e-12 for a, b in zip(lrs[10:], lrs[11:]))
    assert not any(math.isnan(x) for x in lrs)


def test_a_weights_file_with_as_many_classes_keeps_its_trained_head(tmp_path):
    src = build_model("resnet18", 7)
    torch.save(src.state_dict(), tmp_path / "previous.pt")
    m = build_model("resnet18", 7, weights=str(tmp_path / "previous.pt"))
    assert torch.equal(m.fc.weight, src.fc.weight)


# ---- checkpoints --------------------------------------------------------------------------------

def _save_checkpoint(folder, argv, classes=("a", "b", "c"), steps_per_epoch=4):
    from imgclf import checkpoint
    from imgclf.config import args_to_dict
    from imgclf.training import make_optimizer
    args = parse_args(argv)
    model = build_model("resnet18", len(classes))
    opt = make_optimizer(model, args)
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    checkpoint.save(str(folder), model=model, optimizer=opt,
                    scheduler=make_scheduler(opt, args, steps_per_epoch), scaler=None, epoch=1,
                    global_step=steps_per_epoch, args=args_to_dict(args), classes=list(classes),
                    history=[{"epoch": 1, "valid_loss": 0.5}], best={"epoch": 1, "valid_loss": 0.5},
                    best_state=best_state,
                    horizon=checkpoint.horizon(args_to_dict(args), steps_per_epoch))
    return model


def _load(folder, argv, classes=("a", "b", "c"), steps_per_epoch=4):
    from imgclf import checkpoint
    from imgclf.config import args_to_dict
    a = args_to_dict(parse_args(argv))
    return checkpoint.load_latest(str(folder), list(classes), a, checkpoint.horizon(a, steps_per_epoch))


def test_one_checkpoint_holds_the_best_weights_and_loads_weights_only(tmp_path):
    model = _save_checkpoint(tmp_path, ["--epochs", "2"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]   # no best.pt, no tmp
    raw = torch.load(tmp_path / "checkpoint.pt", weights_only=True)          # tensors + plain data
    assert raw["best"]["epoch"] == 1 and raw["horizon"] == {"steps_per_epoch": 4, "total_steps": 8}
    state = _load(tmp_path, ["--epochs", "2"])
    assert torch.equal(state["best_state"]["fc.weight"], model.fc.weight)


def test_a_checkpoint_with_pickled_objects_is_refused_not_executed(tmp_path):
    torch.save({"format": 2, "rng": np.random.get_state()}, tmp_path / "checkpoint.pt")
    with pytest.raises(TrainingError, match="unreadable"):
        _load(tmp_path, [])


def test_rng_states_round_trip():
    from imgclf import checkpoint
    import random
    state = checkpoint.rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2]


@pytest.mark.parametrize("saved,now,needle", [
    (["--lr", "0.005"], ["--lr", "0.009"], r"lr=0\.005 \(now 0\.009\)"),   # another tuning trial
    ([], ["--warmup-epochs", "2"], r"warmup_epochs=1\.0 \(now 2\.0\)"),
    ([], ["--seed", "7"], r"seed=42 \(now 7\)"),
    (["--lr-schedule", "step"], ["--lr-schedule", "step", "--step-size", "2"], r"step_size=5 \(now 2\)"),
    (["--lr-schedule", "step"], ["--lr-schedule", "step", "--gamma", "0.5"], r"gamma=0\.1 \(now 0\.5\)"),
    (["--epochs", "2"], ["--epochs", "5"], r"epochs=2 \(now 5\) - it sets the cosine schedule's horizon"),
    (["--momentum", "0.9"], ["--momentum", "0.8"], r"momentum=0\.9 \(now 0\.8\)"),
    ([], ["--crop-scale", "0.5"], r"crop_scale=0\.08 \(now 0\.5\)"),
])
def test_a_checkpoint_of_another_optimisation_is_refused_naming_the_difference(tmp_path, saved, now, needle):
    _save_checkpoint(tmp_path, saved)
    with pytest.raises(TrainingError, match="another run: " + needle):
        _load(tmp_path, now)


def test_a_checkpoint_written_before_crop_scale_existed_resumes_at_its_default(tmp_path):
    from imgclf import checkpoint
    _save_checkpoint(tmp_path, [])
    raw = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del raw["args"]["crop_scale"]   # what such a checkpoint holds
    torch.save(raw, tmp_path / "checkpoint.pt")
    assert _load(tmp_path, [])["epoch"] == 1
    with pytest.raises(TrainingError, match=r"crop_scale=0\.08 \(now 0\.3\)"):
        _load(tmp_path, ["--crop-scale", "0.3"])
    assert checkpoint.ADDED_LATER["crop_scale"] == parse_args([]).crop_scale


def test_training_crops_keep_at_least_crop_scale_of_the_area():
    from imgclf.transforms import train_transform
    torch.manual_seed(0)
    img = torch.zeros(1, 100, 100, dtype=torch.uint8)
    img[:, 45:55, 45:55] = 255   # a 10x10 square: 1% of the area
    tf = train_transform(50, crop_scale=0.64)
    # a crop of >= 64% of the area (side >= ~70 px of 100) shrinks the square to <= ~7 px of 50
    lit = [int((tf(img) > 127).sum()) for _ in range(40)]
    assert max(lit) <= 8 * 8
    wide = [int((train_transform(50, crop_scale=0.01)(img) > 127).sum()) for _ in range(40)]
    assert max(wide) > 8 * 8     # the ImageNet-style range zooms in much further


def test_what_does_not_change_the_optimisation_resumes(tmp_path):
    _save_checkpoint(tmp_path, ["--lr-schedule", "step", "--epochs", "2"])
    # step/constant schedules do not depend on epochs: a finished run may be extended
    assert _load(tmp_path, ["--lr-schedule", "step", "--epochs", "6", "--warmup-epochs", "3",
                            "--num-workers", "1", "--patience", "2"])["epoch"] == 1
    _save_checkpoint(tmp_path, ["--epochs", "2"])   # cosine: gamma/step-size play no part
    assert _load(tmp_path, ["--epochs", "2", "--gamma", "0.5", "--step-size", "1"])["epoch"] == 1


def test_other_classes_or_steps_per_epoch_are_refused(tmp_path):
    _save_checkpoint(tmp_path, [])
    with pytest.raises(TrainingError, match="3 classes \\(now 2\\)"):
        _load(tmp_path, [], classes=("a", "b"))
    with pytest.raises(TrainingError, match="4 steps per epoch \\(now 6: the train split or the number"):
        _load(tmp_path, [], steps_per_epoch=6)


def test_sagemaker_checkpoints_go_to_one_folder_per_training_job(monkeypatch):
    monkeypatch.delenv("SM_CHECKPOINT_DIR", raising=False)
    monkeypatch.delenv("SAGEMAKER_BASE_DIR", raising=False)
    monkeypatch.setenv("SM_MODEL_DIR", "/opt/ml/model")
    monkeypatch.setenv("TRAINING_JOB_NAME", "dogs-tune-007-abc")
    assert parse_args([]).checkpoint_dir == "/opt/ml/checkpoints/dogs-tune-007-abc"


def _imagenet_shaped(arch):
    """A random state_dict of the ImageNet file's shape (1000 classes, aux heads included)."""
    import torchvision
    return torchvision.models.get_model(arch, weights=None, num_classes=1000, aux_logits=True,
                                        init_weights=False).state_dict()


@pytest.mark.parametrize("arch,size", [("googlenet", 64), ("inception_v3", 80)])
def test_aux_head_archs_load_imagenet_shaped_weights_from_a_file(tmp_path, arch, size):
    state = _imagenet_shaped(arch)
    assert any(k.startswith(("aux1.", "AuxLogits.")) for k in state)
    torch.save(state, tmp_path / f"{arch}-imagenet.pth")
    m = build_model(arch, 5, weights=str(tmp_path / f"{arch}-imagenet.pth")).eval()
    first = next(iter(k for k in state if k.endswith("conv.weight")))
    assert torch.equal(m.state_dict()[first], state[first])
    assert m.transform_input and not m.aux_logits
    with torch.no_grad():
        assert m(torch.zeros(1, 3, size, size)).shape == (1, 5)
    # serving rebuilds the same network from model.json and the artifact's state_dict
    again = build_model(arch, 5, weights="none").eval()
    again.load_state_dict(m.state_dict())
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(again(x), m(x))


def test_aux_head_arch_loads_the_imagenet_download(monkeypatch):
    import torchvision.models._api as api
    state = _imagenet_shaped("googlenet")
    monkeypatch.setattr(api, "load_state_dict_from_url", lambda url, *a, **k: state)
    m = build_model("googlenet", 4, weights="imagenet")
    assert torch.equal(m.conv1.conv.weight, state["conv1.conv.weight"])
    assert m.aux1 is None and m.fc.out_features == 4
