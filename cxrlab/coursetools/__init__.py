"""Course tools: the headless course runner, authoring (learner copies from solutions),
grading of submissions, the Binder prebuild and the chapter-0 environment check."""
