SELECT c.model, c.model_version, c.segment, c.window_start, c.window_end, c.value,
       s.model_version AS stable_version, s.value AS stable_value
FROM window_metrics c JOIN window_metrics s
  ON c.model = s.model AND c.segment = s.segment AND c.window_start = s.window_start
WHERE c.metric = 'accuracy' AND s.metric = 'accuracy' AND c.segment = ''
  AND c.model_version <> s.model_version
  AND c.value < s.value - 0.05
  AND c.sample_count >= 200 AND s.sample_count >= 200
  AND c.window_end = (SELECT max(w.window_end) FROM window_metrics w
                      WHERE w.model = c.model AND w.metric = 'accuracy')