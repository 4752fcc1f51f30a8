"""The torch side: KV tensors, batch packing, the model forward and sampling."""
