"""Interactive widgets, one module per concept: ``degradation`` (ch4 explorer), ``test_mix``
(ch3 test-set mix), ``threshold`` (ch5 decision threshold)."""
