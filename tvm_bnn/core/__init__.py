"""The layer below ``compile``, the backends and tuning: the model pipeline (import -> cleanup -> our passes ->
fused / scheduled / lowered module), the input checks, and the formats on disk (the metadata beside an exported
library, the tuning database). Nothing here imports from ``compiler``, ``backends``, ``deploy.bundle`` or ``tuning``."""
