"""What people look at: the gallery report, the atlas site, Jupyter displays, all rendered from templates."""
