"""The 3D selfie web app: `engine` (photo -> meshes, batched), `server` (FastAPI), `static/` (the page)."""
