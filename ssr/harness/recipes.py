"""The recipes: `RECIPES` names them ("project", this project's settings and prompts; "sdft", SDFT's published
ones, sources in docs/recipes.md). Here: SDFT's prompts, as its official code writes them, which
`ssr.harness.tasks.build_prompt` hands over to for `recipe="sdft"`."""
from __future__ import annotations

from ssr.harness.tasks import Example, Prompt, gold_response

RECIPES = ("project", "sdft")


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
