"""Tiny random causal LMs built from a config, with a byte-level BPE tokenizer trained
locally and a ChatML chat template: what tests train, register and generate with.

With ``tools=True`` the tokenizer gets a tool-capable template instead (``CHATML_TOOLS``,
shaped like Qwen2.5's: the tools listed in the system turn, calls written as
``<tool_call>`` blocks, tool results as ``<tool_response>`` in a user turn), the two
call tags as tokens of their own, and a corpus with some JSON in it.

No hub access: everything is made here in about 2 s and saved as a normal HF model
directory, loadable by path like any real model.
"""

from __future__ import annotations

import json
from pathlib import Path

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Qwen2.5's tool template, cut down: arguments given as objects are written with tojson.
CHATML_TOOLS = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content }}"
    "{%- else %}You are a helpful assistant.{%- endif %}"
    "{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, '
    '\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant' }}{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for call in message.tool_calls %}{%- if call.function is defined %}{%- set call = call.function %}{%- endif %}"
    '{{- \'\\n<tool_call>\\n{\\"name\\": \\"\' + call.name + \'\\", \\"arguments\\": \' }}'
    "{%- if call.arguments is string %}{{- call.arguments }}{%- else %}{{- call.arguments | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
TOOL_TAGS = ["<tool_call>", "</tool_call>"]
TOOL_CORPUS = [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "units": "celsius"}}\n</tool_call>',
    '{"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]} [true, false, null]',
    "Call a tool when you need one; answer directly otherwise. <tools> </tools> <tool_response> </tool_response>",
    '{"name": "get_time", "description": "The local time in a city.", "parameters": {"type": "object", '
    '"properties": {"city": {"type": "string", "enum": ["a", "b"]}, "amount": {"type": "number"}}}}',
    "You may call one or more functions to assist with the user query. You are provided with function "
    "signatures within XML tags. For each function call, return a json object with function name and arguments.",
    "What is the weather, the time, the temperature in a city? Convert an amount of currency. Hello, thanks, "
    "good morning, good night. Tokyo Paris Lima Oslo Rome London Berlin fahrenheit celsius EUR USD JPY",
]

CORPUS = [
    "You are a concise assistant. Summarize the following note. A short summary.",
    "You rewrite text in a polite, professional tone. Rewrite this email more politely.",
    "Translate the colour to French: red rouge, blue bleu, green vert, white blanc, black noir.",
    "The quick brown fox jumps over the lazy dog. 0123456789 ,.;:!?'\"()[]{}<>-_/=+*&%$#@",
    "system user assistant input output prompt response question answer",
]


def build_tokenizer(directory: Path, *, tools: bool = False) -> None:
    """The byte-level BPE tokenizer, saved in ``directory``; ``tools``: the tool-capable variant (module docstring)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000 if tools else 400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator((CORPUS + TOOL_CORPUS if tools else CORPUS) * 20, trainer)
    if tools:  # like Qwen's: tokens of their own, not special (decoding keeps them)
        core.add_tokens([AddedToken(tag, normalized=False) for tag in TOOL_TAGS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    tokenizer.chat_template = CHATML_TOOLS if tools else CHATML
    tokenizer.save_pretrained(directory)


def build_llama(directory: Path, *, hidden: int = 64, layers: int = 2, seed: int = 0, tools: bool = False) -> Path:
    """A ~100k-parameter Llama with its tokenizer, saved in ``directory``; returns it."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    build_tokenizer(directory, tools=tools)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        tie_word_embeddings=True,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def build_qwen2(directory: Path, *, hidden: int = 64, layers: int = 2, seed: int = 0, tools: bool = False) -> Path:
    """A Qwen2 causal LM of the same size as ``build_llama``'s, with its tokenizer; returns ``directory``."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    build_tokenizer(directory, tools=tools)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        tie_word_embeddings=True,
    )  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(directory)
    return directory


SPEECH_CORPUS = [
    "turn off the lights in the kitchen",
    "what is the weather tomorrow in Paris",
    "bonjour, je voudrais réserver une table pour deux",
    "The quick brown fox jumps over the lazy dog. Hello, thanks, good morning, good night.",
]


def build_whisper(directory: Path, *, mel_bins: int = 80, seed: int = 0) -> Path:
    """A tiny random Whisper (2+2 layers of 64) with a byte-level BPE tokenizer trained here, every Whisper special
    token (start of transcript, the language tokens in Whisper's order, tasks, no timestamps), the generation
    config a real multilingual Whisper has (``lang_to_id``, ``task_to_id``; no ``forced_decoder_ids``) and a
    feature extractor of ``mel_bins`` bins, saved in ``directory``; returns it."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperTokenizer
    from transformers import WhisperForConditionalGeneration as Whisper
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    directory.mkdir(parents=True, exist_ok=True)
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator((SPEECH_CORPUS + CORPUS) * 20, trainer)
    vocab = core.get_vocab()
    merges = [
        tuple(m) if not isinstance(m, str) else tuple(m.split(" "))
        for m in json.loads(core.to_str())["model"]["merges"]
    ]
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges)
    specials = ["<|endoftext|>", "<|startoftranscript|>", *[f"<|{code}|>" for code in LANGUAGES],
                "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>",
                "<|notimestamps|>"]  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.save_pretrained(directory)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in specials}
    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=mel_bins, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_source_positions=1500, max_target_positions=448, pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"], suppress_tokens=[], begin_suppress_tokens=None,
    )  # fmt: skip
    model = Whisper(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"], max_length=448,
        is_multilingual=True, lang_to_id={f"<|{code}|>": ids[f"<|{code}|>"] for code in LANGUAGES},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"],
        suppress_tokens=[], begin_suppress_tokens=[ids["<|endoftext|>"]],
    )  # fmt: skip
    model.save_pretrained(directory)
    WhisperFeatureExtractor(feature_size=mel_bins).save_pretrained(directory)
    return directory


def build_tiny_vlm(directory: Path, *, seed: int = 0, image_size: int = 192) -> Path:
    """A tiny random DeepSeek-OCR 2 (about 0.3M parameters: a ``image_size`` px view, two dense text layers of 64)
    with its processor and a tokenizer trained on receipt-like text, saved in ``directory``; returns it. Built by
    ``distillery.demo_ocr.build_ocr_model``, whose docstring says why this architecture and this shape."""
    from distillery.demo_ocr import build_ocr_model

    return build_ocr_model(directory, seed=seed, image_size=image_size, text_width=64, text_layers=2)
