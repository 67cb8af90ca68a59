"""Feature-reuse analysis of densely connected networks (Huang et al., 2017, §5 and Fig. 5).

Import what you need from the submodules; this package imports nothing heavy so that
``reuse-analysis --help`` stays fast.
"""

__version__ = "0.1.0"
