"""ssr: SFT, SSR, S3FT and SDFT fine-tuning on a hand-written transformer, in plain PyTorch."""
from ssr.checkpoint import DEFAULT_MODEL, load_model, save_model
from ssr.model import KVCache, ModelConfig, Transformer
from ssr.sampling import generate
from ssr.tokenizer import Tokenizer, load_tokenizer
