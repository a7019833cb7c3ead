"""Re-publishing the public SpectraSuite release (fp16 Llama checkpoints) as the spectra-hf suite.

discovery    which release repos and step<N> branches exist for the suite models (both size spellings)
conversion   one revision -> packed TriLM / FloatLM / recovered packed GPTQ QuantLM, each verified
journal      what a run finished, so a killed run resumes without repeating or re-committing
manifest     every release revision, the branch it became, its checks and published sha256s
cards        the suite cards plus provenance (release repo, revision, conversion, checks)
estimate     bytes, requests, disk and time of a run (the dry run)
download     one revision: exactly its tree at the discovered commit, each file checked, under the budget
disk         what the run holds on disk, measured, and --max-disk enforced while it runs
target       a work dir serves one target (endpoint + org, or suite dir)
verify       the final check: every published row confirmed on the target; the journal rebuilt from it
pipeline     the loop: download -> convert -> verify -> publish (or import) -> free, under a disk budget
"""

from spectra_hf.release.pipeline import ReleaseRunReport, parse_size, run_release

__all__ = ["ReleaseRunReport", "parse_size", "run_release"]
