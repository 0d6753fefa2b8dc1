"""Chat data: conversations read from LLaVA JSON and messages JSONL, their reason codes, and the
encoding of each supported architecture (labels on the assistant turns only) checked against
computations that do not share its code: the template's own ``{% generation %}`` mask, the decoded
target text, and PaliGemma's processor-made labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from modaltune.data.conversation import CONVERSATION, Conversation, image_names, ordered_images
from modaltune.data.readers import read_rows
from modaltune.data.validate import load_dataset
from modaltune.models.chat_processor import load_processor
from modaltune.tasks.chat_encoding import ChatRowError, encode, prompt_inputs

TEMPLATED = ("llava", "llava_next", "qwen2_vl", "idefics3")
#: What each tiny template makes the model write for the answers "red" and "It is blue.".
TARGETS = {
    "llava": " red</s> It is blue.</s>",
    "llava_next": " red</s> It is blue.</s>",
    "qwen2_vl": "red<|im_end|>It is blue.<|im_end|>",
    "idefics3": " red<end_of_utterance> It is blue.<end_of_utterance>",
}
CONV = Conversation.of(("system", "Be brief."), ("user", "<image>\nWhat colour?"), ("assistant", "red"),
                       ("user", "And this one? <image>"), ("assistant", "It is blue."))


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [Image.new("RGB", (40, 32), "red"), Image.new("RGB", (32, 48), "blue")]


@pytest.fixture(scope="module")
def chat_model(request: pytest.FixtureRequest) -> dict[str, Path]:
    return {arch: request.getfixturevalue(f"tiny_{arch}") for arch in (*TEMPLATED, "paligemma")}


@pytest.fixture(scope="module")
def processors(chat_model: dict[str, Path]) -> dict[str, object]:
    return {arch: load_processor(path) for arch, path in chat_model.items()}


def _with_images(conversation: Conversation, images: list[Image.Image]) -> list[dict]:
    messages = conversation.messages
    pending = iter(images)
    for message in messages:
        for part in message["content"]:
            if part["type"] == "image":
                part["image"] = next(pending)
    return messages


def _image_ids(processor) -> torch.Tensor:
    vocab = processor.tokenizer.get_vocab()
    return torch.tensor([i for t, i in vocab.items() if t in ("<image>", "<|image_pad|>")])


@pytest.mark.parametrize("arch", TEMPLATED)
def test_assistant_mask_matches_the_templates_generation_mask(arch, processors, images):
    processor = processors[arch]
    out = encode(processor, CONV, images, max_length=None)
    reference = processor.apply_chat_template(_with_images(CONV, images), tokenize=True, return_dict=True,
                                              return_tensors="pt", return_assistant_tokens_mask=True)
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert torch.equal(reference["input_ids"][0], ids)
    assert torch.equal(reference["assistant_masks"][0].bool(), labels != -100)
    # Every assistant turn with its end-of-turn token, nothing else; targets are the tokens themselves.
    assert processor.tokenizer.decode(ids[labels != -100]) == TARGETS[arch]
    assert torch.equal(labels[labels != -100], ids[labels != -100])
    assert not torch.isin(ids[labels != -100], _image_ids(processor)).any()


@pytest.mark.parametrize("arch", TEMPLATED)
def test_mask_without_generation_markers_and_template_override(arch, processors, images):
    """Hub templates mostly lack {% generation %}: the same template without the markers, given as
    the --chat-template override, labels the same tokens (found by rendering turn by turn)."""
    processor = processors[arch]
    plain = processor.chat_template.replace("{%- generation -%}", "").replace("{%- endgeneration -%}", "")
    assert "generation -%}" not in plain and "endgeneration" not in plain
    with_markers = encode(processor, CONV, images, max_length=None)
    without = encode(processor, CONV, images, max_length=None, chat_template=plain)
    assert torch.equal(with_markers["labels"], without["labels"])
    # A different template is really used: one that writes turns as "Q:"/"A:".
    other = ("{% for m in messages %}{% if m['role'] == 'user' %}Q: {% for p in m['content'] %}"
             "{% if p['type'] == 'image' %}" + processor.image_token + "{% else %}{{ p['text'] }}{% endif %}"
             "{% endfor %}\n{% elif m['role'] == 'assistant' %}A: {{ m['content'][0]['text'] }}"
             "{{ '" + processor.tokenizer.eos_token + "' }}\n{% endif %}{% endfor %}"
             "{% if add_generation_prompt %}A:{% endif %}")
    out = encode(processor, CONV, images, max_length=None, chat_template=other)
    targets = processor.tokenizer.decode(out["input_ids"][0][out["labels"][0] != -100])
    eos = processor.tokenizer.eos_token
    assert targets.replace(" ", "") == f"red{eos}Itisblue.{eos}".replace(" ", "")
    assert "Q:" not in targets and "colour" not in targets and "brief" not in targets


#: Templates written like the hub checkpoints' (no generation markers; llava-1.5's ends answers with a
#: space, no EOS; Qwen2-VL's adds a default system prompt and writes content parts by type).
LLAVA15_STYLE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
QWEN2_VL_STYLE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.mark.parametrize(("arch", "template", "expected"), [
    ("llava", LLAVA15_STYLE, " red</s> It is blue.</s>"),  # EOS written after each answer: LLaVA's training format
    ("qwen2_vl", QWEN2_VL_STYLE, "red<|im_end|>It is blue.<|im_end|>"),
])
def test_hub_style_templates_without_markers(arch, template, expected, processors, images):
    processor = processors[arch]
    conversation = Conversation(CONV.turns[1:])
    out = encode(processor, conversation, images, max_length=None, chat_template=template)
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert processor.tokenizer.decode(ids[labels != -100]) == expected
    assert not torch.isin(ids[labels != -100], _image_ids(processor)).any()
    prompt = prompt_inputs(processor, conversation, images, chat_template=template)["input_ids"][0]
    generation_prompt = "ASSISTANT:" if arch == "llava" else "<|im_start|>assistant\n"
    assert processor.tokenizer.decode(prompt).endswith(generation_prompt)


def test_paligemma_prefix_suffix_labels_are_the_processors(processors, images):
    processor = processors["paligemma"]
    single = Conversation.of(("user", "<image>\nWhat colour?"), ("assistant", "red"))
    out = encode(processor, single, images[:1], max_length=None)
    made = processor(text=["<image>What colour?"], images=[images[:1]], suffix=["red"], return_tensors="pt")
    assert torch.equal(out["labels"], made["labels"])
    assert torch.equal(out["token_type_ids"], made["token_type_ids"])
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert processor.tokenizer.decode(ids[labels != -100]) == "red<eos>"
    # Multi-turn: earlier turns are the prefix, only the last answer is a target.
    multi = encode(processor, CONV, images, max_length=None)
    assert processor.tokenizer.decode(multi["input_ids"][0][multi["labels"][0] != -100]) == "It is blue.<eos>"
    assert int((multi["input_ids"][0] == processor.image_token_id).sum()) == 2 * 16
    with pytest.raises(ChatRowError) as err:
        encode(processor, Conversation.of(("user", "Hi"), ("assistant", "Hello")), [], max_length=None)
    assert err.value.reason == "missing_field"


@pytest.mark.parametrize("arch", [*TEMPLATED, "paligemma"])
def test_train_on_prompt_labels_all_but_image_and_pad_tokens(arch, processors, images):
    processor = processors[arch]
    out = encode(processor, CONV, images, max_length=None, train_on_prompt=True)
    ids, labels = out["input_ids"][0], out["labels"][0]
    image = torch.isin(ids, _image_ids(processor))
    assert image.sum() > 0 and (labels[image] == -100).all()
    text = processor.tokenizer.decode(ids[labels != -100])
    assert "Be brief." in text and "What colour?" in text and "It is blue." in text
    default = encode(processor, CONV, images, max_length=None)["labels"][0]
    assert ((default != -100) <= (labels != -100)).all()


@pytest.mark.parametrize(("arch", "expected"), [
    ("qwen2_vl", {(32, 32): 16, (48, 32): 24, (64, 64): 64}),  # one token per 8x8 pixels
    ("llava_next", {(32, 32): 36, (64, 32): 52, (64, 64): 88}),  # base 16 + tiles 4x4 each + a newline per row
    ("idefics3", {(32, 32): 20, (64, 32): 12, (64, 64): 20}),  # 4 per tile and for the global image
])
def test_image_tokens_come_from_the_processor(arch, expected, processors):
    processor = processors[arch]
    token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>" if arch == "qwen2_vl" else "<image>")
    one = Conversation.of(("user", "<image>What?"), ("assistant", "red"))
    counts = {size: int((encode(processor, one, [Image.new("RGB", size)], max_length=None)["input_ids"] == token).sum())
              for size in expected}
    assert counts == expected


def test_tokens_added_after_the_vocabulary_was_read_are_seen(chat_model, images):
    """The vocabulary is read once per tokenizer, not per conversation, and read again when tokens
    are added: a tile tag added after a first encode is an image token, never a target."""
    processor = load_processor(chat_model["idefics3"])  # its own copy: the shared one keeps its vocabulary
    tag = "<row_9_col_9>"
    conv = Conversation.of(("user", "<image>What?"), ("assistant", f"red {tag}"))
    encode(processor, conv, images[:1], max_length=None)
    processor.tokenizer.add_tokens([tag], special_tokens=True)
    out = encode(processor, conv, images[:1], max_length=None, train_on_prompt=True)
    at = out["input_ids"][0] == processor.tokenizer.convert_tokens_to_ids(tag)
    assert int(at.sum()) == 1 and int(out["labels"][0][at]) == -100


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl", "paligemma"])
def test_too_long_is_dropped_or_cut_in_the_last_answer_never_in_image_tokens(arch, processors, images):
    processor = processors[arch]
    long = Conversation.of(("user", "<image>\nDescribe it."),
                           ("assistant", "a red circle " * 6 + "on a white background."))
    full = encode(processor, long, images[:1], max_length=None)
    n = full["input_ids"].shape[1]
    with pytest.raises(ChatRowError) as err:
        encode(processor, long, images[:1], max_length=n - 1)
    assert err.value.reason == "too_long"
    cut = encode(processor, long, images[:1], max_length=n - 5, truncate="last-turn")
    assert cut["input_ids"].shape[1] == n - 5
    assert torch.equal(cut["input_ids"][0], full["input_ids"][0, :n - 5])
    assert torch.equal(cut["labels"][0], full["labels"][0, :n - 5]) and (cut["labels"] != -100).any()
    assert torch.equal(cut["pixel_values"], full["pixel_values"])
    image = torch.isin(full["input_ids"][0], _image_ids(processor)).nonzero()[:, 0]
    assert image.numel() and int(image.max()) < n - 5
    # A limit inside the prompt (here: inside the image tokens) is too long even with last-turn.
    with pytest.raises(ChatRowError) as err:
        encode(processor, long, images[:1], max_length=int(image[len(image) // 2]), truncate="last-turn")
    assert err.value.reason == "too_long"


@pytest.mark.parametrize("arch", TEMPLATED)
def test_prompt_inputs_end_with_the_generation_prompt(arch, processors, images):
    processor = processors[arch]
    prompt = prompt_inputs(processor, CONV, images)
    full = encode(processor, CONV, images, max_length=None)
    ids = prompt["input_ids"][0]
    first_target = int((full["labels"][0] != -100).nonzero()[-1].item())  # inside the last answer
    last_answer = (full["labels"][0, :first_target + 1] == -100).nonzero()[-1].item() + 1
    assert torch.equal(ids, full["input_ids"][0, :last_answer])
    assert "labels" not in prompt
    for key in ("pixel_values", "image_grid_thw"):
        if key in full:
            assert torch.equal(prompt[key], full[key])


def test_text_only_and_multi_image_rows_encode(processors, images):
    text_only = Conversation.of(("user", "What is two plus three?"), ("assistant", "5"))
    for arch in TEMPLATED:
        out = encode(processors[arch], text_only, [], max_length=None)
        assert "pixel_values" not in out
        assert processors[arch].tokenizer.decode(out["input_ids"][0][out["labels"][0] != -100]).strip().startswith("5")
    with pytest.raises(ChatRowError) as err:
        encode(processors["llava"], CONV, images[:1], max_length=None)
    assert err.value.reason == "image_placeholder_mismatch"


@pytest.mark.parametrize("arch", [*TEMPLATED, "paligemma"])
def test_tiny_models_load_and_train_on_the_encoding(arch, chat_model, processors, images):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(chat_model[arch])
    out = encode(processors[arch], CONV, images, max_length=None)
    loss = model(**out).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# ---- data: readers, reason codes, sniffing ------------------------------------------------------


def test_llava_json_and_messages_jsonl_read_the_same_conversations(chat_llava_json, chat_messages_jsonl):
    a, bad_a, _ = read_rows(chat_llava_json, require=(CONVERSATION,))
    b, bad_b, _ = read_rows(chat_messages_jsonl, require=(CONVERSATION,))
    assert not bad_a and not bad_b and len(a) == len(b) == 24
    for x, y in zip(a, b):
        assert x.conversation == y.conversation
        assert [p.name for p in ordered_images(x.media)] == [p.name for p in ordered_images(y.media)]
    kinds = {r.extra["id"].split("-")[0] for r in a}
    assert {"colour", "count", "position", "compare", "text"} <= kinds
    assert any(len(r.media) == 2 for r in a) and any(not r.media for r in a)
    assert any(r.conversation.turns[0].role == "system" for r in a)
    assert any(len(r.conversation.assistant_indices()) == 2 for r in a)
    rows, report = load_dataset(chat_llava_json, require=(CONVERSATION,))
    assert report.rows_ok == 24


def test_several_images_are_decoded_in_order(chat_llava_json):
    from modaltune.trainer.batches import MediaDataset

    rows, _ = load_dataset(chat_llava_json, require=(CONVERSATION,))
    index = next(i for i, r in enumerate(rows) if len(r.media) == 2)
    row, media = MediaDataset(rows)[index]
    assert set(media) == set(image_names(2)) == {"image", "image#1"}
    decoded = ordered_images(media)
    assert [im.size for im in decoded] == [(32, 32), (32, 32)]
    assert [p.name for p in ordered_images(row.media)] == sorted(p.name for p in row.media.values())


def _png(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(path)
    return str(path.relative_to(path.parent.parent))


def test_reason_codes(tmp_path):
    ok = _png(tmp_path / "img" / "a.png")
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    def conv(*turns: tuple[str, str]) -> list[dict[str, str]]:
        return [{"from": who, "value": text} for who, text in turns]

    qa = conv(("human", "<image>Q"), ("gpt", "A"))
    rows = [
        {"image": ok, "conversations": conv(("human", "<image>\nWhat?"), ("gpt", "red"))},
        {"image": ok, "conversations": conv(("human", "What?"), ("gpt", "red"))},
        {"conversations": conv(("gpt", "Hi"), ("human", "Hello"))},
        {"conversations": conv(("human", "Hi"), ("gpt", "  "))},
        {"conversations": conv(("human", "Hi"), ("robot", "x"))},
        {"image": "img/missing.png", "conversations": qa},
        {"image": "img/broken.png", "conversations": qa},
        {"image": "../outside.png", "conversations": qa},
        {"conversations": conv(("system", "Be brief."), ("human", "Hi"), ("gpt", "Hello"))},
        {"conversations": conv(("human", "Hi"), ("gpt", "Hello"), ("human", "?"))},
        {"images": [ok, ok], "conversations": conv(("human", "<image><image>Same?"), ("gpt", "yes"))},
    ]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    good, report = load_dataset(path, require=(CONVERSATION,), skip_bad=True)
    reasons = {b.id.split(":")[-1]: b.reason for b in report.bad}
    assert reasons == {"[1]": "image_placeholder_mismatch", "[2]": "bad_role_order", "[3]": "empty_turn",
                       "[4]": "bad_role_order", "[5]": "missing_file", "[6]": "corrupt_image",
                       "[7]": "path_escapes_root", "[9]": "bad_role_order"}
    assert [r.id.split(":")[-1] for r in good] == ["[0]", "[8]", "[10]"]


def test_messages_jsonl_typed_parts_inline_paths_and_string_content(tmp_path):
    ok = _png(tmp_path / "img" / "a.png")
    lines = [
        {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "red"}]}], "images": [ok]},
        {"messages": [{"role": "user", "content": [{"type": "image", "image": ok}, {"type": "text", "text": "Q"}]},
                      {"role": "assistant", "content": "A"}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>Q"},
                      {"role": "assistant", "content": "A"}], "images": [ok]},
        {"messages": [{"role": "user", "content": [{"type": "video"}]}, {"role": "assistant", "content": "A"}]},
        {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]},
                      {"role": "assistant", "content": "A"}], "images": []},
    ]
    path = tmp_path / "msgs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n", encoding="utf-8")
    good, report = load_dataset(path, require=(CONVERSATION,), skip_bad=True)
    assert [r.id for r in good] == ["msgs.jsonl:1", "msgs.jsonl:2", "msgs.jsonl:3"]
    assert all(len(r.media) == 1 for r in good)
    assert good[2].conversation.turns[0].role == "system"
    assert {b.id: b.reason for b in report.bad} == {"msgs.jsonl:4": "bad_json", "msgs.jsonl:5":
                                                     "image_placeholder_mismatch", "msgs.jsonl:6": "bad_json"}


def test_sniffing_keeps_coco_and_chat_apart(tmp_path, caption_manifest):
    from modaltune.data.readers import Source, get_reader
    from modaltune.testing.synthetic import write_caption_corpus

    coco = write_caption_corpus(tmp_path / "coco", 3, seed=0, image_size=8, coco=True) \
        if "coco" in write_caption_corpus.__code__.co_varnames else None
    chat = tmp_path / "c.json"
    chat.write_text(json.dumps([{"image": "a.png", "conversations": []}]), encoding="utf-8")
    assert get_reader("chat-json").sniff(Source(chat))
    assert not get_reader("coco-captions").sniff(Source(chat))
    if coco is not None:
        assert not get_reader("chat-json").sniff(Source(coco))
    assert not get_reader("chat-jsonl").sniff(Source(caption_manifest))  # a plain image/text manifest
    # A LLaVA-looking .json with a dict at the top is not chat data.
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"conversations": [{"from": "human", "value": "x"}]}), encoding="utf-8")
    assert not get_reader("chat-json").sniff(Source(odd))


def test_chat_data_for_another_task_says_to_use_the_chat_task(tmp_path):
    from modaltune.errors import DataError

    path = tmp_path / "llava.json"
    path.write_text(json.dumps([{"id": "1", "image": "a.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}]}]), encoding="utf-8")
    with pytest.raises(DataError, match="holds chat conversations, but this task needs image, text.*--task chat"):
        read_rows(path, require=("image", "text"))
