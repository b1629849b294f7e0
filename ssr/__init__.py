"""ssr: SFT, SSR, S3FT and SDFT fine-tuning on a hand-written transformer, in plain PyTorch."""
