SELECT model, max(window_end) AS window_end, evaluation_time() AS evaluated_at
FROM window_metrics
WHERE metric = 'count' AND segment = ''
GROUP BY model
HAVING max(window_end) < evaluation_time() - INTERVAL '10 minutes'