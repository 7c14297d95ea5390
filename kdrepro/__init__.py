"""kdrepro: a reproducible replication suite for knowledge distillation in recommender systems.

Replicates the methods of SeongKu Kang's dissertation *Knowledge Distillation Approaches for Accurate
and Efficient Recommender System* (arXiv 2407.13952): DE, RRD, PHR, FTD/HTD, IR-RRD, ConCF, HetComp.
"""

__version__ = "0.1.0"
