"""Operations package: the `cai` command line, machine setup and the local service stack."""
