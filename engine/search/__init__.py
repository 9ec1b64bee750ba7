"""Search: parsing what people type, filters, and the cascade from the BE's candidates to the reranked hits."""
