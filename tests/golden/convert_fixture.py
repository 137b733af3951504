#!/usr/bin/env python3
"""Rewrites a Hugging Face fixture checkpoint into another on-disk layout of
the same model, so a test can check that both load to the same logits.

  convert_fixture.py mistral-native HF_DIR OUT_DIR
      Mistral 4 (HF) -> Mistral's native format: params.json and
      consolidated-0000k-of-0000n.safetensors with native tensor names;
      fused experts are split into per-expert w1 (gate), w3 (up), w2 (down).
  convert_fixture.py llama4-multimodal HF_DIR OUT_DIR
      llama4_text -> model_type llama4 with a nested text_config and every
      tensor under the "language_model." prefix, as the released Maverick
      checkpoint stores it.

Standard library only; reads and writes safetensors directly.
"""
import json
import os
import re
import struct
import sys

DTYPE_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "I64": 8, "I32": 4, "U8": 1}


def read_checkpoint(d):
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    tensors = {}
    for fn in files:
        with open(os.path.join(d, fn), "rb") as f:
            blob = f.read()
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8:8 + n])
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            b, e = info["data_offsets"]
            tensors[name] = (info["dtype"], info["shape"], blob[base + b:base + e])
    return tensors


def write_safetensors(path, tensors):
    header, off, chunks = {}, 0, []
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
        chunks.append(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for c in chunks:
            f.write(c)


def split_rows(dtype, shape, data, parts):
    """Splits a tensor [E, R, C] into E tensors [R, C] (bytes)."""
    e, r, c = shape
    step = r * c * DTYPE_SIZE[dtype]
    return [data[i * step:(i + 1) * step] for i in range(e)]


MISTRAL_RENAMES = [
    (r"^model\.embed_tokens\.weight$", "tok_embeddings.weight"),
    (r"^lm_head\.weight$", "output.weight"),
    (r"^model\.norm\.weight$", "norm.weight"),
    (r"^model\.layers\.(\d+)\.input_layernorm\.weight$", r"layers.\1.attention_norm.weight"),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.weight$", r"layers.\1.ffn_norm.weight"),
    (r"^model\.layers\.(\d+)\.self_attn\.q_a_proj\.", r"layers.\1.attention.wq_a."),
    (r"^model\.layers\.(\d+)\.self_attn\.q_a_layernorm\.", r"layers.\1.attention.q_a_norm."),
    (r"^model\.layers\.(\d+)\.self_attn\.q_b_proj\.", r"layers.\1.attention.wq_b."),
    (r"^model\.layers\.(\d+)\.self_attn\.q_proj\.", r"layers.\1.attention.wq."),
    (r"^model\.layers\.(\d+)\.self_attn\.kv_a_proj_with_mqa\.", r"layers.\1.attention.wkv_a_with_mqa."),
    (r"^model\.layers\.(\d+)\.self_attn\.kv_a_layernorm\.", r"layers.\1.attention.kv_a_norm."),
    (r"^model\.layers\.(\d+)\.self_attn\.kv_b_proj\.", r"layers.\1.attention.wkv_b."),
    (r"^model\.layers\.(\d+)\.self_attn\.o_proj\.", r"layers.\1.attention.wo."),
    (r"^model\.layers\.(\d+)\.mlp\.gate\.weight$", r"layers.\1.gate.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.shared_experts\.gate_proj\.", r"layers.\1.shared_experts.w1."),
    (r"^model\.layers\.(\d+)\.mlp\.shared_experts\.up_proj\.", r"layers.\1.shared_experts.w3."),
    (r"^model\.layers\.(\d+)\.mlp\.shared_experts\.down_proj\.", r"layers.\1.shared_experts.w2."),
    (r"^model\.layers\.(\d+)\.mlp\.gate_proj\.", r"layers.\1.feed_forward.w1."),
    (r"^model\.layers\.(\d+)\.mlp\.up_proj\.", r"layers.\1.feed_forward.w3."),
    (r"^model\.layers\.(\d+)\.mlp\.down_proj\.", r"layers.\1.feed_forward.w2."),
]


def mistral_native(src, dst):
    cfg = json.load(open(os.path.join(src, "config.json")))
    if cfg.get("model_type") != "mistral4":
        sys.exit("mistral-native: source is not a mistral4 checkpoint")
    out = {}
    for name, (dtype, shape, data) in read_checkpoint(src).items():
        m = re.match(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$", name)
        if m:
            layer, kind = m.groups()
            slabs = split_rows(dtype, shape, data, shape[0])
            e, r, c = shape
            for i, slab in enumerate(slabs):
                p = f"layers.{layer}.experts.{i}."
                if kind == "down_proj":
                    out[p + "w2.weight"] = (dtype, [r, c], slab)
                else:
                    half = len(slab) // 2
                    out[p + "w1.weight"] = (dtype, [r // 2, c], slab[:half])
                    out[p + "w3.weight"] = (dtype, [r // 2, c], slab[half:])
            continue
        for pat, rep in MISTRAL_RENAMES:
            if re.match(pat, name):
                out[re.sub(pat, rep, name)] = (dtype, shape, data)
                break
        else:
            sys.exit(f"mistral-native: no native name for {name}")
    rp = cfg["rope_parameters"]
    params = {
        "dim": cfg["hidden_size"], "n_layers": cfg["num_hidden_layers"],
        "n_heads": cfg["num_attention_heads"], "n_kv_heads": cfg["num_key_value_heads"],
        "hidden_dim": cfg["intermediate_size"], "norm_eps": cfg["rms_norm_eps"],
        "vocab_size": cfg["vocab_size"], "rope_theta": rp["rope_theta"],
        "max_position_embeddings": cfg["max_position_embeddings"],
        "q_lora_rank": cfg["q_lora_rank"], "kv_lora_rank": cfg["kv_lora_rank"],
        "qk_nope_head_dim": cfg["qk_nope_head_dim"], "qk_rope_head_dim": cfg["qk_rope_head_dim"],
        "v_head_dim": cfg["v_head_dim"], "tied_embeddings": cfg.get("tie_word_embeddings", False),
        "yarn": {"factor": rp["factor"],
                 "original_max_position_embeddings": rp["original_max_position_embeddings"],
                 "beta_fast": rp["beta_fast"], "beta_slow": rp["beta_slow"],
                 "mscale": rp["mscale"], "mscale_all_dim": rp["mscale_all_dim"]},
        "llama_4_scaling": {"original_max_position_embeddings": rp["original_max_position_embeddings"],
                            "beta": rp["llama_4_scaling_beta"]},
        "moe": {"num_experts": cfg["n_routed_experts"],
                "num_experts_per_tok": cfg["num_experts_per_tok"],
                "num_shared_experts": cfg["n_shared_experts"],
                "expert_hidden_dim": cfg["moe_intermediate_size"],
                "first_k_dense_replace": cfg["first_k_dense_replace"],
                "routed_scale": cfg["routed_scaling_factor"],
                "num_expert_groups": cfg["n_group"],
                "num_expert_groups_per_tok": cfg["topk_group"]},
    }
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(dst, "params.json"), "w") as f:
        json.dump(params, f, indent=1)
    names = sorted(out)
    half = len(names) // 2
    for k, part in enumerate((names[:half], names[half:])):
        write_safetensors(os.path.join(dst, f"consolidated-{k + 1:05d}-of-00002.safetensors"),
                          {n: out[n] for n in part})


def llama4_multimodal(src, dst):
    cfg = json.load(open(os.path.join(src, "config.json")))
    if cfg.get("model_type") != "llama4_text":
        sys.exit("llama4-multimodal: source is not a llama4_text checkpoint")
    tensors = {"language_model." + n: v for n, v in read_checkpoint(src).items()}
    os.makedirs(dst, exist_ok=True)
    outer = {"architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4",
             "text_config": cfg,
             "vision_config": {"model_type": "llama4_vision_model", "hidden_size": 64}}
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(outer, f, indent=1)
    names = sorted(tensors)
    third = (len(names) + 2) // 3
    weight_map = {}
    for k in range(3):
        part = names[k * third:(k + 1) * third]
        fn = f"model-{k + 1:05d}-of-00003.safetensors"
        write_safetensors(os.path.join(dst, fn), {n: tensors[n] for n in part})
        weight_map.update({n: fn for n in part})
    with open(os.path.join(dst, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("mistral-native", "llama4-multimodal"):
        sys.exit(__doc__)
    {"mistral-native": mistral_native, "llama4-multimodal": llama4_multimodal}[sys.argv[1]](
        sys.argv[2], sys.argv[3])
