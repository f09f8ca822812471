"""Each contract rule fails on a component broken in exactly that way and passes on a
correct control (tests/fixtures/clapkit_broken_components.py)."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

import pytest

from clapkit.plugins import PluginHost
from clapkit.testing import (BackboneContract, HeadContract, LossContract, ModuleContract,
                             SelectorContract)

FIXTURE = Path(__file__).parents[1] / "fixtures" / "clapkit_broken_components.py"


@pytest.fixture(scope="module")
def broken_host() -> PluginHost:
    spec = importlib.util.spec_from_file_location("clapkit_broken_components", FIXTURE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod            # attrs type hints resolve through the module
    spec.loader.exec_module(mod)
    host = PluginHost()
    assert host.add_plugin(mod, "broken", "broken-fixtures", "0")
    return host


def _call(suite, method: str, entry, ctx, tmp_path) -> None:
    fn = getattr(suite(), method)
    kwargs = {"entry": entry, "contract_ctx": ctx, "device": "cpu", "tmp_path": tmp_path}
    fn(**{k: kwargs[k] for k in inspect.signature(fn).parameters})


# (suite, rule method, broken component, control, what the failure message must say)
CASES = [
    (HeadContract, "test_trainable_parameters_receive_gradients", "unused_param_head",
     "good_head", r"head 'unused_param_head': trainable parameter\(s\) extra receive no grad"),
    (HeadContract, "test_state_dict_survives_save_and_load", "plain_state_head", "good_head",
     r"head 'plain_state_head': outputs after a state_dict save/load differ"),
    (HeadContract, "test_state_dict_survives_save_and_load", "lazy_buffer_head", "good_head",
     r"head 'lazy_buffer_head': state_dict keys differ .*calls"),
    (HeadContract, "test_deterministic_under_seed_in_train_mode", "python_random_head",
     "good_head", r"head 'python_random_head': train-mode outputs .* differ"),
    (HeadContract, "test_bfloat16", "fp32_constant_head", "good_head",
     r"head 'fp32_constant_head': a forward in bfloat16 failed"),
    (HeadContract, "test_forward_under_autocast", "autocast_head", "good_head",
     r"head 'autocast_head': a forward under autocast \(bfloat16\) failed"),
    (HeadContract, "test_task_lifecycle_grows_and_resumes", "grows_at_task_end_head",
     "good_head", r"head 'grows_at_task_end_head': state_dict keys differ .*growing"),
    (HeadContract, "test_output_follows_the_contract", "wrong_shape_head", "good_head",
     r"head 'wrong_shape_head': logits has shape \(4, 6\), expected \(4, 5\)"),
    (HeadContract, "test_out_of_range_numbers_fail_at_the_option", "hidden_head", "good_head",
     r"head 'hidden_head': option hidden = -1 passes the config but fails inside"),
    (HeadContract, "test_wrong_type_option_is_an_error_naming_the_field", "untyped_head",
     "good_head", r"head 'untyped_head': option 'gain' accepts a value of any type"),
    (LossContract, "test_no_option_shadows_a_core_key", "shadow_loss", "good_queue_loss",
     r"loss 'shadow_loss': option\(s\) weight have the name of a core key"),
    (LossContract, "test_state_dict_survives_save_and_load", "plain_queue_loss",
     "good_queue_loss", r"loss 'plain_queue_loss': outputs after a state_dict save/load"),
    (LossContract, "test_needs_are_outputs_a_pipeline_declares", "undeclarable_need_loss",
     "good_queue_loss", r"loss 'undeclarable_need_loss': needs 'aux.mean'"),
    (SelectorContract, "test_selects_class_balanced_positions", "index_selector",
     "position_selector", r"selector 'index_selector': .* not positions"),
    (BackboneContract, "test_image_prompted_without_prompts_equals_encode_image",
     "prompted_mismatch_backbone", "tiny_backbone",
     r"backbone 'prompted_mismatch_backbone': encode_image_prompted\(x, \[\]\) vs encode_im"),
    (BackboneContract, "test_text_embedded_equals_encode_text", "embedded_mismatch_backbone",
     "tiny_backbone", r"backbone 'embedded_mismatch_backbone': encode_text_embedded\("),
    (BackboneContract, "test_widths_and_depths", "no_depth_backbone", "tiny_backbone",
     r"backbone 'no_depth_backbone': text_layers must be a positive int"),
    (BackboneContract, "test_image_tokens_pool_to_encode_image",
     "pooled_tokens_mismatch_backbone", "tiny_backbone",
     r"backbone 'pooled_tokens_mismatch_backbone': encode_image_tokens\(x\)\.pooled vs "),
    (BackboneContract, "test_text_tokens_pool_to_encode_text", "all_real_text_mask_backbone",
     "tiny_backbone", r"backbone 'all_real_text_mask_backbone': the padding mask does not "),
    (BackboneContract, "test_text_decoder_is_causal_and_reads_the_image",
     "peeking_decoder_backbone", "tiny_backbone",
     r"backbone 'peeking_decoder_backbone': decoder logits before a changed text position"),
    (BackboneContract, "test_capabilities_are_known_names", "unknown_capability_backbone",
     "tiny_backbone", r"backbone 'unknown_capability_backbone': unknown capability 'tokens'"),
    (BackboneContract, "test_missing_capabilities_are_refused_naming_the_backbone",
     "silent_refusal_backbone", "tiny_backbone",
     r"backbone 'silent_refusal_backbone': without capability 'text_decoder' the refusal"),
    (BackboneContract, "test_missing_capabilities_are_refused_naming_the_backbone",
     "undeclared_tokens_backbone", "tiny_backbone",
     r"backbone 'undeclared_tokens_backbone': 'text_tokens' is not in capabilities but its "),
]


@pytest.mark.parametrize("suite, rule, broken, control, message", CASES,
                         ids=[c[2] for c in CASES])
def test_rule_catches_its_broken_plugin(suite, rule, broken, control, message, broken_host,
                                        contract_ctx, tmp_path):
    reg = broken_host.registries[suite.kind]
    _call(suite, rule, reg.get(control), contract_ctx, tmp_path)       # the control passes
    with pytest.raises((AssertionError, pytest.fail.Exception), match=message):
        _call(suite, rule, reg.get(broken), contract_ctx, tmp_path)


@pytest.mark.parametrize("suite, control", [
    (HeadContract, "good_head"), (LossContract, "good_queue_loss"),
    (SelectorContract, "position_selector"), (BackboneContract, "tiny_backbone")])
def test_controls_pass_their_whole_suite(suite, control, broken_host, contract_ctx, tmp_path):
    entry = broken_host.registries[suite.kind].get(control)
    rules = [n for n in dir(suite) if n.startswith("test_")]
    assert len(rules) >= (12 if issubclass(suite, ModuleContract) else 6)
    for rule in rules:
        _call(suite, rule, entry, contract_ctx, tmp_path)


def test_every_new_rule_has_a_broken_fixture():
    covered = {c[1] for c in CASES}
    for rule in ("test_trainable_parameters_receive_gradients",
                 "test_state_dict_survives_save_and_load",
                 "test_deterministic_under_seed_in_train_mode", "test_bfloat16",
                 "test_forward_under_autocast", "test_task_lifecycle_grows_and_resumes",
                 "test_out_of_range_numbers_fail_at_the_option",
                 "test_wrong_type_option_is_an_error_naming_the_field",
                 "test_no_option_shadows_a_core_key",
                 "test_needs_are_outputs_a_pipeline_declares",
                 "test_image_prompted_without_prompts_equals_encode_image",
                 "test_text_embedded_equals_encode_text", "test_widths_and_depths",
                 "test_image_tokens_pool_to_encode_image", "test_text_tokens_pool_to_encode_text",
                 "test_text_decoder_is_causal_and_reads_the_image",
                 "test_capabilities_are_known_names",
                 "test_missing_capabilities_are_refused_naming_the_backbone"):
        assert rule in covered, rule
