"""The rule judges under their public names: `from ssr import judges; judges.gsm8k(output, reference)`,
`judges.mbpp(output, tests, setup)`, `judges.nq(output, answers)`, each returning a `Verdict` (.correct, .reason).
They live in the harness (ssr/harness/judges.py and the task files), which a learner of the methods never
needs to read; this file only names them."""
from ssr.harness.judges import Verdict, gsm8k, judge, mbpp, nq, squad2  # noqa: F401
