"""The `.krona.safetensors` file: the validated reader, the atomic writer, metadata, a text summary."""
