"""Weight clustering: k-means weight sharing, cluster-preserving fine-tuning, the cluster loss,
and a packed file format.

Example::

    from netcompress.clustering import cluster_weights_, save_clustered
    summary = cluster_weights_(model, clusters=16)  # in place
    save_clustered(model, "model.clustered.pt")     # indices at 4 bits + codebooks
"""

from netcompress.clustering.channel_scale import ChannelScale, bn_to_channel_scale_
from netcompress.clustering.kmeans import KMEANS_INITS, kmeans_1d, nearest_centroid
from netcompress.clustering.model_clustering import ClusterConfig, cluster_weights, cluster_weights_
from netcompress.clustering.regularizer import ClusterLoss, cluster_distance
from netcompress.clustering.storage import load_clustered, pack_indices, save_clustered, unpack_indices
from netcompress.clustering.weight_sharing import (
    ClusterPreserving,
    ClusterSharing,
    cluster_module,
    clustered_modules,
    index_bits,
    snap_clusters,
    strip_clustering,
)

__all__ = [
    "KMEANS_INITS",
    "ClusterConfig",
    "ClusterLoss",
    "ClusterPreserving",
    "ClusterSharing",
    "ChannelScale",
    "bn_to_channel_scale_",
    "cluster_distance",
    "cluster_module",
    "cluster_weights",
    "cluster_weights_",
    "clustered_modules",
    "index_bits",
    "kmeans_1d",
    "load_clustered",
    "nearest_centroid",
    "pack_indices",
    "save_clustered",
    "snap_clusters",
    "strip_clustering",
    "unpack_indices",
]
