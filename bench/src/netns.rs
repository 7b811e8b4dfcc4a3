//! Nodes on a network of their own: each node in its own Linux network
//! namespace, linked to a bridge in the bench's namespace, so that a node
//! can be cut off from the others by taking its link down.
