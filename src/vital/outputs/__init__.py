"""Everything a run or a command leaves on disk: the run record, claimed folders, atomic files, path confinement."""
