"""ssr: SFT, SSR, S3FT and SDFT fine-tuning on a hand-written transformer, in plain PyTorch."""
from ssr.checkpoint import load_model, save_model
from ssr.model import KVCache, ModelConfig, Transformer
from ssr.sampling import generate
from ssr.smollm2 import DEFAULT_MODEL
from ssr.tokenizer import Tokenizer, load_tokenizer
