"""Analysis tools: embedding export, t-SNE pictures, the binning estimate of
mutual information ("BI" analysis) and training-curve plots.

Pure numpy/matplotlib parts (mutual_info, tsne, curves) import no torch;
embeddings.py holds the torch side (running a backbone over a data set).
"""
