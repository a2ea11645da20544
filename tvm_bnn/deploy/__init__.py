"""The standalone C bundle: ``bundle.build_bundle`` strings together ``kernel_calls``, ``arena``, ``c_writer``,
``weights`` and ``toolchain``; ``lean`` is its memory-lean schedule; ``startup/`` holds the bare-metal startup code
and linker script templates the emulated boards run it with."""
