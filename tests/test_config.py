"""Config loading: presets, overrides, files, and one clear error per bad input."""

import pytest

from pytest_dsocr.config import GROUP_TARGETS, available_presets, load_config
from pytest_dsocr.decoding import FALLBACK_MAX_NEW_TOKENS, parse_max_new_tokens, token_budget
from pytest_dsocr.errors import DsocrError


def test_defaults_are_the_embedded_default():
    cfg = load_config()
    assert cfg.model.family == "deepseek_ocr"
    assert cfg.model.size == "tiny"
    assert cfg.model.path is None
    assert (cfg.model.base_size, cfg.model.image_size, cfg.model.crop_mode) == (1024, 640, True)
    assert cfg.dataset.name == "samples"
    out = cfg.pipeline.direct_inference.output
    assert out.prediction.enable is False and out.prediction.save_dir == "pred"
    assert out.visualization.enable is True and out.visualization.save_dir == "viz"
    assert out.extra.deepseek_ocr.prediction.strip_special_tokens is False
    assert out.extra.deepseek_ocr.visualization.max_images == 16
    assert out.extra.deepseek_ocr.visualization.thumbnail_width == 480


def test_every_preset_loads():
    for group in GROUP_TARGETS:
        for name in available_presets(group):
            load_config(overrides=[f"{group}={name}"])


def test_dotted_override_and_preset_choice():
    cfg = load_config(overrides=["model=deepseek_ocr/full", "infer.rounds=3", "dataset.sampling.seed=7"])
    assert cfg.model.size == "full"
    assert cfg.infer.rounds == 3
    assert cfg.dataset.sampling.seed == 7


def test_later_override_wins():
    cfg = load_config(overrides=["infer.rounds=2", "infer.rounds=5"])
    assert cfg.infer.rounds == 5


def test_config_file_merges_over_defaults(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("defaults:\n  - infer: vendor\nmodel:\n  base_size: 640\n")
    cfg = load_config(file, overrides=["infer.rounds=2"])
    assert cfg.model.base_size == 640
    assert cfg.infer.max_new_tokens == 8192  # from the vendor preset
    assert cfg.infer.rounds == 2  # command line beats the file


@pytest.mark.parametrize("override, key", [
    ("model.nope=1", "model.nope"),
    ("nope.deeper=1", "nope"),
    ("pipeline.direct_inference.output.prediction.colour=red", "pipeline.direct_inference.output.prediction.colour"),
])
def test_unknown_key_is_named(override, key):
    with pytest.raises(DsocrError, match=f"unknown config key '{key}'"):
        load_config(overrides=[override])


@pytest.mark.parametrize("override, key", [
    ("infer.rounds=many", "infer.rounds"),
    ("model.crop_mode=perhaps", "model.crop_mode"),
    ("model.base_size=1.5", "model.base_size"),
])
def test_wrong_type_is_named(override, key):
    with pytest.raises(DsocrError, match=key.replace(".", r"\.")):
        load_config(overrides=[override])


@pytest.mark.parametrize("value", ["0", "-3", "1.5", "lots", "true"])
def test_bad_max_new_tokens_fails_fast(value):
    with pytest.raises(DsocrError, match=r"infer\.max_new_tokens"):
        load_config(overrides=[f"infer.max_new_tokens={value}"])


@pytest.mark.parametrize("value", ["inf", "INF", "Inf"])
def test_inf_max_new_tokens(value):
    cfg = load_config(overrides=[f"infer.max_new_tokens={value}"])
    assert parse_max_new_tokens(cfg.infer.max_new_tokens) is None


def test_parse_max_new_tokens():
    assert parse_max_new_tokens(12) == 12
    assert parse_max_new_tokens("12") == 12
    for bad in (0, -1, 1.5, "x", True, None):
        with pytest.raises(DsocrError, match="max_new_tokens"):
            parse_max_new_tokens(bad)


def test_token_budget_is_bounded_by_the_context(caplog):
    assert token_budget(100, prompt_len=1000, max_positions=8192) == 100
    assert token_budget(None, prompt_len=1000, max_positions=8192) == 7192
    assert token_budget(9000, prompt_len=1000, max_positions=8192) == 7192
    with caplog.at_level("WARNING"):
        assert token_budget(None, prompt_len=10, max_positions=None) == FALLBACK_MAX_NEW_TOKENS
    assert "FALLBACK_MAX_NEW_TOKENS" in caplog.text


@pytest.mark.parametrize("override, key", [
    ("model.family=gpt", "model.family"),
    ("model.size=huge", "model.size"),
    ("model.dtype=int8", "model.dtype"),
    ("model.device=tpu", "model.device"),
    ("model.base_size=1000", "model.base_size"),
    ("infer.rounds=0", "infer.rounds"),
    ("infer.warmup_rounds=-1", "infer.warmup_rounds"),
    ("infer.decode_backend=turbo", "infer.decode_backend"),
])
def test_bad_values_are_named(override, key):
    with pytest.raises(DsocrError, match=key.replace(".", r"\.")):
        load_config(overrides=[override])


def test_missing_model_path_is_named(tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(DsocrError, match="model.path=.*no-such-checkpoint.*no such directory"):
        load_config(overrides=[f"model.path={missing}"])
    missing.mkdir()
    with pytest.raises(DsocrError, match="config.json missing"):
        load_config(overrides=[f"model.path={missing}"])
    (missing / "config.json").write_text("{}")
    with pytest.raises(DsocrError, match="safetensors"):
        load_config(overrides=[f"model.path={missing}"])


def test_unknown_preset_lists_known_ones():
    with pytest.raises(DsocrError, match="known: .*default"):
        load_config(overrides=["infer=nonexistent"])


@pytest.mark.parametrize("text, match", [
    ("model: [unclosed", "not valid YAML"),
    ("- a\n- b\n", "must hold a mapping"),
])
def test_bad_config_file(tmp_path, text, match):
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    with pytest.raises(DsocrError, match=match):
        load_config(file)


def test_missing_config_file(tmp_path):
    with pytest.raises(DsocrError, match="file not found"):
        load_config(tmp_path / "absent.yaml")


def test_override_without_equals():
    with pytest.raises(DsocrError, match="expected key=value"):
        load_config(overrides=["model.size"])


def test_hardware_group_sets_the_name():
    cfg = load_config(overrides=["hardware=h100_sxm"])
    assert cfg.hardware.name == "h100_sxm"


def test_unknown_hardware_lists_the_known_tables():
    with pytest.raises(DsocrError, match=r"hardware.name='tpu_v9'.*known: .*h100_sxm"):
        load_config(overrides=["hardware=tpu_v9"])


@pytest.mark.parametrize("override, message", [
    ("infer.temperature=nan", r"infer\.temperature=nan: must be a finite number >= 0"),
    ("infer.temperature=inf", r"infer\.temperature=inf: must be a finite number >= 0"),
    ("infer.temperature=-1", r"infer\.temperature=-1\.0: must be a finite number >= 0"),
])
def test_temperature_must_be_finite_and_not_negative(override, message):
    with pytest.raises(DsocrError, match=message):
        load_config(overrides=[override])


@pytest.mark.parametrize("overrides, message", [
    (["infer.temperature=0.7", "infer.top_p=1e30"], r"infer\.top_p=1e\+30: must lie in \(0, 1\]"),
    (["infer.temperature=0.7", "infer.top_p=0"], r"infer\.top_p=0\.0: must lie in \(0, 1\]"),
    (["infer.temperature=0.7", "infer.top_p=nan"], r"infer\.top_p=nan: must lie in \(0, 1\]"),
    (["infer.temperature=0.7", "infer.top_k=-3"], r"infer\.top_k=-3: must be an integer >= 1"),
    (["infer.top_p=0.9"], r"infer\.top_p=0\.9: has no effect with greedy decoding"),
    (["infer.top_k=5"], r"infer\.top_k=5: has no effect with greedy decoding"),
])
def test_sampling_filters_are_checked_before_any_model(overrides, message):
    with pytest.raises(DsocrError, match=message):
        load_config(overrides=overrides)


def test_valid_sampling_settings_load():
    cfg = load_config(overrides=["infer.temperature=0.7", "infer.top_p=1", "infer.top_k=40"])
    assert (cfg.infer.temperature, cfg.infer.top_p, cfg.infer.top_k) == (0.7, 1.0, 40)


@pytest.mark.parametrize("item", ["dataset.patterns=[*.gif]", "dataset.patterns=*.gif", "run.root=@home", "run.root=[unclosed"])
def test_a_value_yaml_cannot_read_names_the_key_and_how_to_quote(item):
    with pytest.raises(DsocrError) as error:
        load_config(overrides=[item])
    message = str(error.value)
    key = item.split("=")[0]
    assert f"--dsocr-set {item!r}: the value of {key} is not valid YAML" in message
    assert "dataset.patterns=['*.gif', '*.png']" in message  # how to quote


def test_a_quoted_pattern_list_loads():
    assert list(load_config(overrides=["dataset.patterns=['*.gif']"]).dataset.patterns) == ["*.gif"]
