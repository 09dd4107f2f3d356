"""Experiments built from the library: the UniRep distillation preset (:mod:`.unirep_preset`,
:mod:`.preset_report`), the settings sweep (:mod:`.sweep`), the selector study and the
paper-size run for a lent GPU (:mod:`.gpu_scale`). The core library never imports this
package; the embedded default run is a recipe (:mod:`mtdp.distill.recipe`)."""
