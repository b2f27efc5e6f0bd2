"""Everything written into OUT besides the database: atomic files, videos, the metadata index, the gallery,
contact sheets, export layouts and their verification. Knows nothing of rendering or of manifests."""
