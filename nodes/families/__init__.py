"""ComfyUI model glue per family, mirroring ``framebridge_core/families/``: each module turns a detected
checkpoint into a MODEL (model config, ``BaseModel`` subclass, latent format, model sampling)."""
