"""The recipes: every setting a run's flags default to, and SDFT's published recipe as its official code
runs it (sail-sg/sdft, branch `reproduce`; sources setting by setting in docs/recipes.md).

"project" is this project's choices (the task prompts in the model's chat template, greedy targets, the
judges); "s3ft" is the project's settings with S3FT's two prompts: the model's answers are generated with the
predict prompt and trained, like gold, as the response to a separate training prompt (`tasks.train_messages`);
"sdft" is SDFT's GSM8K recipe: LLaMA-Factory's text templates (trained as text, each piece encoded on
its own, as its code does), sampled rewrites, its `verify()` + last-integer filter instead of a judge, and its
training settings. Flags given explicitly win over a recipe. `ssr.harness.tasks.build_prompt` hands
over to `sdft_prompt` here for `recipe="sdft"`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ssr.harness.tasks import Example, Prompt, gold_response
from ssr.harness.records import prompt_ids
from ssr.methods import Generation, Target, sdft_verify
from ssr.trainer import Sample, encode

@dataclass
class LoraSettings:  # a run's LoRA settings, as lora.apply_lora takes them
    r: int = 8
    alpha: float = 16
    dropout: float = 0.05
    modules: tuple[str, ...] = ("q_proj", "v_proj")  # the projections wrapped: apply_lora's `targets`


RECIPES = {
    "project": dict(epochs=3, lr=1e-4, warmup=0.03, min_lr_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0,
                    micro_batch=2, grad_accum=4, seed=0, lora_r=8, lora_alpha=16.0, lora_dropout=0.05,
                    lora_modules="q_proj,v_proj", max_len=2048, max_new_tokens=512,
                    temperature=0.0, top_k=0, top_p=1.0, sample_seed=None),
    # the project's settings (S3FT publishes none it could be checked against); only the training prompt differs
    "s3ft": dict(epochs=3, lr=1e-4, warmup=0.03, min_lr_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0,
                 micro_batch=2, grad_accum=4, seed=0, lora_r=8, lora_alpha=16.0, lora_dropout=0.05,
                 lora_modules="q_proj,v_proj", max_len=2048, max_new_tokens=512,
                 temperature=0.0, top_k=0, top_p=1.0, sample_seed=None),
    # sail-sg/sdft@reproduce: scripts/gsm8k/sdft.sh (epochs, lr, batch 2 x 4, cosine, q_proj,v_proj),
    # hparams/finetuning_args.py (lora_rank 8, alpha = 2 * rank, dropout 0.1), data_args.py (cutoff_len 1024),
    # generating_args.py (do_sample, temperature 0.95, top_p 0.7, top_k 50, max_new_tokens 512); warmup,
    # weight decay, clipping and seed 42 are transformers' TrainingArguments defaults (not overridden).
    "sdft": dict(epochs=5, lr=1e-4, warmup=0.0, min_lr_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0,
                 micro_batch=2, grad_accum=4, seed=42, lora_r=8, lora_alpha=16.0, lora_dropout=0.1,
                 lora_modules="q_proj,v_proj", max_len=1024, max_new_tokens=512,
                 temperature=0.95, top_k=50, top_p=0.7, sample_seed=42),
}


def default_recipe(task: str) -> str:
    """The recipe of a run not given --recipe: "project", for every task. It takes no method on purpose: the trap
    avoided is a comparison of methods that silently compares budgets and prompts (SDFT's 5 epochs and text
    template against the project's 3 and chat template) instead of target choices. `--recipe sdft` gives SDFT's
    settings to every method (the paper's SFT baseline included)."""
    return "project"


def check_recipe(recipe: str, method: str, chat_template: str | None, model: str) -> None:
    """Refuse, by name, a recipe a run cannot follow. The SDFT recipe's prompts are Llama-2-chat's text format
    (<<SYS>>, [INST]): on a model with another chat format they would train it on a format it never saw, so they
    are refused unless the template is forced (--chat-template llama2). It has no paraphrase prompt, so S3FT
    (which SDFT's paper did not run) is refused under it too."""
    if recipe != "sdft":
        return
    if method == "s3ft":
        raise ValueError("--method s3ft --recipe sdft: SDFT's recipe has no paraphrase prompt (its code and paper "
                         "have none); run s3ft with --recipe project")
    if chat_template != "llama2":
        raise ValueError(f"--recipe sdft: SDFT's prompts are Llama-2-chat's format (<<SYS>>, [INST]); --model {model} "
                         f"uses the {chat_template or 'unknown'} chat template (use --recipe project, or --chat-template "
                         "llama2 to train that format anyway)")


# SDFT's prompts, as its official code writes them
#
# LLaMA-Factory text templates of the official code (sail-sg/sdft, branch
# `reproduce`, src/llmtuner/data/template.py: `gsm8k` for training, `gsm8k_infer` for evaluation,
# `gsm8k_distill` for the rewrites), as (system, prompt). They are not the model's chat template: the
# <<SYS>> block comes before [INST], and Template._encode encodes [BOS], the prefix with the system text
# and the prompt each on its own (tokenizer.encode(piece, add_special_tokens=False)), so each piece gets
# SentencePiece's leading "▁". {query} is the raw question, {resp} the gold answer, both stripped; the
# distill prompt ends in " Great! Let's think step by step. ", its trailing space included.
SDFT_SYSTEM_BLOCK = "<<SYS>>\n{system}\n<</SYS>>\n\n"
SDFT_TEMPLATES = {
    "gsm8k": ("You are an expert in math. Below is a math question. "
              "Write a response that appropriately answers the question.",
              "[INST] {query} [/INST]"),
    "gsm8k_infer": ("You are an expert in math. Below is a math question. "
                    "Write a response that appropriately answers the question. "
                    "Your final answer should be an integer at the end of your response, formatted as: "
                    "The answer is {answer}.",
                    "[INST] {query} [/INST]"),
    "gsm8k_distill": ("You are an expert in math. Below are a math question and its reference answer. "
                      "Refer to the reference answer and write a response that appropriately answers the question.",
                      "[INST] {query}\n\n{resp} [/INST] Great! Let's think step by step. "),
}
SDFT_MODE_TEMPLATE = {"train": "gsm8k", "predict": "gsm8k_infer", "rewrite": "gsm8k_distill"}


def sdft_prompt(example: Example, template: str) -> Prompt:
    """One of SDFT_TEMPLATES filled in, LLaMA-Factory's way (str.replace, not format: the system text of
    gsm8k_infer contains a literal "{answer}")."""
    if example.task != "gsm8k":
        raise ValueError(f"the SDFT recipe's templates are for GSM8K; example {example.id} is {example.task!r} "
                         "(use --recipe project)")
    system, prompt = SDFT_TEMPLATES[template]
    pieces = [SDFT_SYSTEM_BLOCK.replace("{system}", system),
              prompt.replace("{query}", example.question.strip()).replace("{resp}", gold_response(example).strip())]
    return Prompt([{"role": "system", "content": system}, {"role": "user", "content": pieces[1]}], pieces=pieces)


def find_last_integer(s: str) -> str:
    """eval/utils.py `find_last_integer`: the last number, commas and spaces between digit groups joined; a
    number with a non-zero decimal part is "-999999999" (invalid); "3.0" is "3"."""
    numbers = re.findall(r"-?\d+(?:[,\s]\d+)*(?:\.\d+)?", s)
    number = numbers[-1].replace(",", "").replace(" ", "") if numbers else "-999999999"
    if len(number.split(".")) > 1 and int(number.split(".")[1]) != 0:
        return "-999999999"
    return number.split(".")[0]


def sdft_check_math(output: str, gold: str) -> bool:
    """eval/eval_math.py `check_math`: the last integers of the output and of the gold answer are equal."""
    try:
        return int(find_last_integer(gold)) == int(find_last_integer(output.strip()))
    except ValueError:
        return False


def hf_clean_up(text: str) -> str:
    """transformers 4.34's `clean_up_tokenization` (decode(..., clean_up_tokenization_spaces=True)), which the
    official code applies to the generated rewrites before it trains on them."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


def sdft_rewrite(record: dict, example: Example) -> Generation:
    """The SDFT recipe's rewrite and its filter, as gen_distilled_data.py has them: the decoded text cleaned up
    and stripped, kept if verify() passes and its last integer is the gold one (no judge)."""
    text = hf_clean_up(record["output"]).strip()
    if record["finish_reason"] != "stop":
        return Generation(text, "cut at max_new_tokens")
    if not text:
        return Generation(text, "empty")
    why = sdft_verify(text) or (None if sdft_check_math(text, gold_response(example)) else "sdft: last integer differs")
    return Generation(text, why)


def encode_text_template(tok, prompts, targets: list[Target], max_len: int) -> tuple[list[Sample], dict]:
    """The SDFT recipe's training samples, as LLaMA-Factory's `encode_oneturn` builds them: the prompt's
    pieces (BOS, system block, "[INST] {query} [/INST]") then tokenizer.encode(response) + EOS, each encoded on
    its own; only the response and EOS are supervised. Longer than max_len: cut from the right (LLaMA-Factory
    shares cutoff_len between prompt and response in proportion; no GSM8K item comes near 1024 tokens)."""
    pairs = [(prompt_ids(tok, prompt), tok.encode(t.response.strip()) + [tok.eos_id])
             for prompt, t in zip(prompts, targets)]
    return encode(tok, pairs, max_len, [t.source for t in targets])  # trainer.encode's (prompt, response) ids
