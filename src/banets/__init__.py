"""banets: Born Again Neural Networks (Furlanello et al., ICML 2018) as a library."""
