"""Chapter toolboxes: probes (ch3), degradations and sweeps (ch4), saliency (ch4), fairness
(ch5), learners' self-checks, and the interactive widgets."""
