"""The LRP rule chain: a model's operations in forward order (`build`), one rule per operation (`rules`), blocks
with relevance splitting (`blocks`), the supported families' tables (`families`) and the backend that runs it
(`backend`)."""
