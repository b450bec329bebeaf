"""val_loss / val_bpb: plain and sliding windows, score-first TTT, n-gram mixing."""
