"""The demo model's synthetic world (:mod:`clipsearch.demo.synth`) and its build
(:mod:`clipsearch.demo.build`); ``python -m clipsearch.demo --help`` lists the steps."""
