"""SDFT's published recipe against its official code (sail-sg/sdft, branch `reproduce`, commit 953518b), GSM8K
gold in the prompt's final-line form, and MBPP's official splits.

The expected strings below were written from reading the official source, each piece cited; the expected ids
come from SentencePiece itself (Llama-2's tokenizer.model), encoding each piece on its own as LLaMA-Factory's
Template._encode does with `tokenizer.encode(piece, add_special_tokens=False)`.
"""
import json
import shutil

import pytest

import ssr
import train
from hf_oracle import make_checkpoint
from ssr import methods
from ssr.harness import recipes
from ssr.harness.records import prompt_ids, prompt_text
from ssr.harness.tasks import build_prompt, gold_response, load_task

LLAMA2 = "tokenizers/Llama-2-7b-chat-hf"


@pytest.fixture(scope="module")
def gsm8k(shared):
    return load_task(shared / "data" / "gsm8k" / "train.jsonl", limit=3)


@pytest.fixture(scope="module")
def sp(shared):
    import sentencepiece
    return sentencepiece.SentencePieceProcessor(model_file=str(shared / LLAMA2 / "tokenizer.model"))


def test_gsm8k_gold_is_sdft_data_form(gsm8k):
    # data/gsm8k/gsm8k_train.json of sail-sg/sdft@reproduce, items 0 and 1, verbatim: calculator notes gone,
    # "#### N" turned into "The answer is N.", the final line the prompts ask for (every method's gold).
    assert gold_response(gsm8k[0]) == ("Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips "
                                       "altogether in April and May.\nThe answer is 72.")
    assert gold_response(gsm8k[1]) == ("Weng earns 12/60 = $0.2 per minute.\nWorking 50 minutes, she earned "
                                       "0.2 x 50 = $10.\nThe answer is 10.")


# template.py, register_template(name="gsm8k_distill" / "gsm8k"): prefix "<<SYS>>\n{{system}}\n<</SYS>>\n\n" and
# the system strings; the prompt "[INST] {{query}}\n\n{{resp}} [/INST] Great! Let's think step by step. " (distill)
# and "[INST] {{query}} [/INST]" (train). Template._encode (the "gsm8k*" names are not "llama2", so the base
# class): bos_ids + encode(prefix) + sep_ids (empty) + encode(prompt), query and resp strip()ed in
# _convert_inputs_to_ids; encode_oneturn's response is encode(resp) + [eos].
DISTILL_SYSTEM = ("<<SYS>>\nYou are an expert in math. Below are a math question and its reference answer. Refer to "
                  "the reference answer and write a response that appropriately answers the question.\n<</SYS>>\n\n")
TRAIN_SYSTEM = ("<<SYS>>\nYou are an expert in math. Below is a math question. Write a response that appropriately "
                "answers the question.\n<</SYS>>\n\n")
INFER_SYSTEM = ("<<SYS>>\nYou are an expert in math. Below is a math question. Write a response that appropriately "
                "answers the question. Your final answer should be an integer at the end of your response, "
                "formatted as: The answer is {answer}.\n<</SYS>>\n\n")


def test_sdft_prompts_equal_the_official_rendering_id_for_id(shared, gsm8k, sp):
    tok = ssr.load_tokenizer(shared / LLAMA2)
    for e in gsm8k:
        # the query is the raw question (dataset_info.json: prompt "question"); resp the SDFT data's answer
        query, resp = e.question.strip(), gold_response(e)
        distill = [DISTILL_SYSTEM, f"[INST] {query}\n\n{resp} [/INST] Great! Let's think step by step. "]
        trained = [TRAIN_SYSTEM, f"[INST] {query} [/INST]"]
        infer = [INFER_SYSTEM, f"[INST] {query} [/INST]"]
        for mode, pieces in (("rewrite", distill), ("train", trained), ("predict", infer)):
            expected = [sp.bos_id()] + [i for piece in pieces for i in sp.encode(piece)]
            prompt = build_prompt(e, mode, "sdft")
            assert prompt_ids(tok, prompt) == expected, mode
            assert prompt_text(tok, prompt) == "<s>" + "".join(pieces)
        # the distill prompt ends in the trailing space's own "▁" token, as the official prompt does
        assert sp.id_to_piece(prompt_ids(tok, build_prompt(e, "rewrite", "sdft"))[-1]) == "▁"
        # a training sample: the train prompt's ids, then encode(response) + EOS, only those supervised
        target = methods.Target(e.id, resp, "gold")
        [sample], _ = recipes.encode_text_template(tok, [build_prompt(e, "train", "sdft")], [target], 1024)
        head = [sp.bos_id()] + [i for piece in trained for i in sp.encode(piece)]
        assert sample.ids == head + sp.encode(resp) + [sp.eos_id()]
        assert sample.mask == [0] * len(head) + [1] * (len(sample.ids) - len(head))


@pytest.mark.parametrize("text, why", [
    ("Using the Reference Answer, 48/2 = 24. The answer is 72.", "sdft verify: mentions 'reference answer'"),
    ("Here is your response: 72", "sdft verify: mentions 'your response'"),
    ("My response is 72.", "sdft verify: mentions 'my response'"),
    ("Write your own response. The answer is 72.", "sdft verify: mentions 'your own response'"),
    ("Now it's your turn! The answer is 72.", "sdft verify: mentions \"now it's your turn\""),
    ("Your turn: she sold 72 clips.", "sdft verify: starts with 'Your turn'"),
    ("She sold 72 clips in all. Your turn to try one!", None),  # "your turn" elsewhere is allowed (prefix only)
    ("In May she sold 24, so 48 + 24 = 72.", None),
])
def test_sdft_verify_phrases_and_prefix(text, why):
    assert methods.sdft_verify(text) == why


@pytest.mark.parametrize("output, ok", [
    ("48 + 24 = 72 clips. The answer is 72.", True),
    ("The answer is 72. That is 3 more than 69.", False),  # the last integer counts, not the stated answer
    ("She sold 7,2 clips", True),  # commas between digit groups are joined ("7,2" -> 72)
    ("The answer is 72.0", True),  # a zero decimal part is dropped
    ("The answer is 72.5", False),  # a non-zero decimal part is invalid
    ("no number at all", False),
])
def test_sdft_last_integer_rule(output, ok):
    assert recipes.sdft_check_math(output, "Natalia sold 48/2 = 24 clips in May.\nThe answer is 72.") is ok


def test_sdft_answer_cleans_and_filters_like_gen_distilled_data():
    e = load_task.__globals__["Example"]("0", "gsm8k", "q", "48/2 = <<48/2=24>>24\n#### 24")
    record = {"output": " She sold 48 / 2 = 24 . The answer is 24 .", "finish_reason": "stop"}
    answer = recipes.sdft_rewrite(record, e)
    assert answer.output == "She sold 48 / 2 = 24. The answer is 24." and answer.rejected is None
    assert recipes.sdft_rewrite({**record, "output": "The answer is 25."}, e).rejected == "sdft: last integer differs"
    assert recipes.sdft_rewrite({**record, "finish_reason": "length"}, e).rejected == "cut at max_new_tokens"


@pytest.fixture(scope="module")
def llama_dir(shared, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama2")
    make_checkpoint(folder, "llama", vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(shared / LLAMA2 / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def gsm8k_file(shared, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("\n".join((shared / "data" / "gsm8k" / "train.jsonl").read_text().splitlines()[:4]) + "\n")
    return path


def test_train_sdft_records_official_sampling_and_same_seed_same_targets(llama_dir, gsm8k_file, tmp_path):
    targets = []
    for run in ("a", "b"):
        out = tmp_path / run
        argv = ["--method", "sdft", "--recipe", "sdft", "--data", str(gsm8k_file), "--model", str(llama_dir),
                "--out", str(out), "--max-new-tokens", "6", "--epochs", "1", "--lora-r", "2"]
        assert train.main(argv) == 0
        settings = json.loads((out / "run.json").read_text())
        # generating_args.py: do_sample True, temperature 0.95, top_p 0.7, top_k 50 (max_new_tokens 512 unless cut)
        assert settings["recipe"] == "sdft"
        assert settings["sampling"] == {"do_sample": True, "temperature": 0.95, "top_k": 50, "top_p": 0.7,
                                        "seed": 42, "max_new_tokens": 6}
        assert settings["lora"] == {"r": 2, "alpha": 16.0, "dropout": 0.1, "modules": ["q_proj", "v_proj"]}
        assert settings["train"]["epochs"] == 1 and settings["train"]["warmup"] == 0.0
        assert settings["train"]["seed"] == 42 and settings["max_len"] == 1024
        rewrites = [json.loads(line) for line in (out / "rewrite.jsonl").read_text().splitlines()]
        assert rewrites[0]["prompt_text"].startswith("<s><<SYS>>\nYou are an expert in math. Below are")
        targets.append([(r["output"], r["output_tokens"]) for r in rewrites])
        targets.append((out / "targets.jsonl").read_text())
    assert targets[0] == targets[2] and targets[1] == targets[3]
    # a random model sampling at 0.95 does not repeat itself: the rewrites are sampled, not greedy
    assert len({text for text, _ in targets[0]}) > 1


def test_train_sdft_defaults_without_flags():
    _, args = train.parse_args(["--method", "sdft", "--data", "x", "--out", "y"])
    assert args.epochs is None and args.lora_dropout is None  # unset: taken from the recipe in main()
    assert recipes.RECIPES["sdft"]["epochs"] == 5 and recipes.RECIPES["sdft"]["lora_dropout"] == 0.1
    # no default depends on the method: SDFT's recipe only when asked for, for every method alike
    assert {recipes.default_recipe(task) for task in ("gsm8k", "mbpp", "nq", "squad2", "chat")} == {"project"}


def test_recipe_sdft_gives_every_method_sdfts_settings_and_only_the_targets_differ(llama_dir, gsm8k_file, tmp_path,
                                                                                   capsys):
    """The SDFT paper's comparison: --recipe sdft gives its SFT baseline and SDFT the same prompts and training
    settings (SSR too); run.json differs in the method alone. S3FT (no paraphrase prompt in SDFT's recipe) and a
    model whose chat format is not Llama-2's are refused by name, before anything is written."""
    common = ["--recipe", "sdft", "--data", str(gsm8k_file), "--model", str(llama_dir), "--max-new-tokens", "6",
              "--lora-r", "2"]
    settings = {}
    for method in ("sft", "ssr", "sdft"):
        assert train.main(["--method", method, *common, "--out", str(tmp_path / method)]) == 0
        settings[method] = json.loads((tmp_path / method / "run.json").read_text())
        assert settings[method].pop("method") == method
    assert settings["sft"] == settings["ssr"] == settings["sdft"]
    sdft = recipes.RECIPES["sdft"]
    assert settings["sft"]["recipe"] == "sdft" and settings["sft"]["max_len"] == 1024
    assert settings["sft"]["lora"] == {"r": 2, "alpha": 16.0, "dropout": 0.1, "modules": ["q_proj", "v_proj"]}
    assert {k: settings["sft"]["train"][k] for k in ("epochs", "warmup", "seed")} == {"epochs": 5, "warmup": 0.0,
                                                                                      "seed": 42}
    assert settings["sft"]["sampling"]["temperature"] == sdft["temperature"]
    # SFT trains SDFT's text template on gold, as the paper's baseline does
    sft_targets = [json.loads(line) for line in (tmp_path / "sft" / "targets.jsonl").read_text().splitlines()]
    assert sft_targets[0]["messages"][-1]["content"].startswith("[INST] ")

    capsys.readouterr()
    assert train.main(["--method", "s3ft", *common, "--out", str(tmp_path / "s3ft")]) == 1
    assert capsys.readouterr().err.startswith("error: --method s3ft --recipe sdft: SDFT's recipe has no paraphrase")
    assert train.main(["--method", "sft", *common, "--chat-template", "mistral", "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert "--recipe sdft: SDFT's prompts are Llama-2-chat's format" in err and "uses the mistral chat template" in err
    assert not (tmp_path / "s3ft").exists() and not (tmp_path / "m").exists()


def test_mbpp_test_split_refused_by_name_and_train_split_limit(shared, llama_dir, tmp_path, capsys):
    mbpp = shared / "data" / "mbpp" / "mbpp.jsonl"
    argv = ["--method", "sft", "--data", str(mbpp), "--model", str(llama_dir), "--max-new-tokens", "4",
            "--epochs", "1", "--lora-r", "2"]
    assert train.main(argv + ["--out", str(tmp_path / "t"), "--limit", "5"]) == 1
    err = capsys.readouterr().err
    assert "MBPP's test split (task_ids 11-510" in err and "--split train" in err
    assert train.main(argv + ["--out", str(tmp_path / "t2"), "--split", "test", "--limit", "5"]) == 1
    assert "test split" in capsys.readouterr().err
    assert train.main(argv + ["--out", str(tmp_path / "ok"), "--split", "train", "--limit", "5"]) == 0
    trained = [json.loads(line) for line in (tmp_path / "ok" / "targets.jsonl").read_text().splitlines()]
    assert [t["id"] for t in trained] == ["601", "602", "603", "604", "605"]
    assert [e.id for e in load_task(mbpp, split="validation")][::89] == ["511", "600"]
    assert [e.id for e in load_task(mbpp, split="prompt")] == [str(i) for i in range(1, 11)]
    assert len(load_task(mbpp, split="test")) == 500
