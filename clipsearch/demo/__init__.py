"""The demo model's synthetic world (:mod:`clipsearch.demo.synth`), its build
(:mod:`clipsearch.demo.build`) and command line (:mod:`clipsearch.demo.cli`);
``python -m clipsearch.demo --help`` lists the steps."""
