"""Operations, the top floor: the `cai` command line that gathers every package's commands, the
main job (``cai run``), the live monitor and the strategy grid. Nothing imports this package."""
