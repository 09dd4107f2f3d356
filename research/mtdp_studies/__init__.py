"""Studies' shared code, outside the installed ``mtdp`` package: the UniRep distillation preset
(:mod:`.unirep_preset`, :mod:`.preset_report`), the settings sweep (:mod:`.sweep`), the teacher
selector study (:mod:`.selector_study`, :mod:`.selector_eval`, :mod:`.selector_report`) and the
paper-size run for a lent GPU (:mod:`.gpu_scale`). The scripts in ``research/`` run them."""
