"""K-fold image + caption multi-label classification for the COMP5329 competition."""
