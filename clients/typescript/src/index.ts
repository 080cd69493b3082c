// @lognitor/ai-wallet-client: the AI Wallet API for AI features.
export { WalletClient } from './client.ts';
export type { Spent, WalletClientOptions, WithHoldParams, WriteOptions } from './client.ts';
export { ERROR_STATUS, WalletError, isErrorCode } from './errors.ts';
export type { ClientErrorCode, ErrorCode, WalletErrorCode } from './errors.ts';
export { DEFAULT_RETRY_POLICY, delayBeforeRetry, isRetryableStatus, retryAfterMs } from './retry.ts';
export type { RetryPolicy } from './retry.ts';
export type * from './types.ts';
