"""dtype helpers: short names for printing and dtype classes used by the rules."""
import torch

SHORT_NAMES = {
    torch.float64: "f64", torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16",
    torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
    torch.uint8: "u8", torch.bool: "bool", torch.complex64: "c64", torch.complex128: "c128",
}


def short_name(dtype: torch.dtype) -> str:
    return SHORT_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half types accumulate in float32 (used by reductions and the compiler)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
