"""The primitive set and its lax-style functions (rules sit next to each primitive)."""
from . import util, elementwise, shape, reduce, linalg, indexing, random, collective, opaque  # noqa: F401
from .elementwise import *  # noqa: F401,F403
from .shape import (broadcast_in_dim, broadcast_to, reshape, transpose, slice_, slice_in_dim, pad,  # noqa: F401
                    concatenate, rev)
from .reduce import reduce_sum, reduce_max, reduce_min, reduce_prod, argmax, argmin, cumsum  # noqa: F401
from .linalg import dot_general, matmul  # noqa: F401
from .indexing import take, scatter_add, scatter, take_along_axis, scatter_add_along, sort  # noqa: F401
from .collective import psum, pmax, all_gather, axis_index  # noqa: F401
from .random import random, random_p  # noqa: F401  (P.random is the function, like P.add)
from .opaque import OpaqueFunction, opaque  # noqa: F401
from .conv import conv, conv_p  # noqa: F401  (P.conv is the function)
from .util import instantiate, moveaxis, bdim_to_front  # noqa: F401
